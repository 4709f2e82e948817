"""Pictures and videos of occupancy grids (PNG, MP4, GIF), headless: no display, no OpenGL.

Every command takes `--benchmark` (default occ3d-nuscenes; core/benchmarks/): the grid shape, range,
voxel size, class names and cameras of the files. Commands and examples: docs/visualization.md.

3D picture (`render`): the prediction beside its ground truth, voxels as shaded cubes in class colours,
from a chase camera (behind and above the ego, looking forward) and a bird's-eye camera
(tools/occ_render.py); with `--info` also the prediction's voxels drawn on the six camera images.

    python tools/visualize.py render --pred preds/<token>.npz \
        --gt data/synthetic/gts/<scene>/<token>/labels.npz --out occupancy_3d.png

Video (`video`): one such picture per saved prediction of a scene (val.py --save-dir), in the order of
the samples' timestamps (with `--info`; else by file name), as .mp4 (H.264 through imageio-ffmpeg)
or .gif.

    python tools/visualize.py video --pred-dir preds/ --info data/synthetic/nuscenes_infos_val_mini_sweep.pkl \
        --scene scene-0103 --gt-root data/synthetic/gts --out scene-0103.mp4

Bird's-eye view (the default command, or `bev`): a predicted grid next to its ground truth, flat.

    python tools/visualize.py --pred demo_output/preds/<token>.npz \
        --gt data/synthetic/gts/<scene>/<token>/labels.npz --out occupancy.png

Each BEV pixel shows the class of the highest occupied voxel of its column (x right, y up, ego at
the centre); free columns are white. With `--camera-mask` only camera-visible voxels are drawn
(what mIoU scores).

Projection view (`projection`): the six camera images (front row FRONT_LEFT, FRONT, FRONT_RIGHT; back
row BACK_LEFT, BACK, BACK_RIGHT) with 3D points projected through each camera's lidar2img and coloured
by depth (red near, then yellow, green, cyan, blue at --max-depth and beyond), nearest on top.

    python tools/visualize.py projection --info data/nuscenes/nuscenes_infos_val_sweep.pkl --index 0 \
        --out projection.png                        # the sample's LiDAR sweep (its lidar_path)
    python tools/visualize.py projection --info INFO.pkl --occ gts/<scene>/<token>/labels.npz \
        --color-by class --out occ_projection.png   # occupied voxel centres (GT or a prediction)

`--info` is a gen_sweep_info.py pickle or an mmdet3d "info v1.1" pickle (`data_list`, e.g. the
keyframe of ../shared/data/nuscenes-keyframe); `--points` a LiDAR file (float32 [N, 5], LiDAR frame).
"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run as a script too

from core.benchmarks import DEFAULT_BENCHMARK, get_benchmark  # noqa: E402
from core.geometry import dense_from_sparse, pad_intrinsic, rigid_inverse, rigid_transform  # noqa: E402
from tools.occ_render import class_palette  # noqa: E402

# The default benchmark's fields; every function also takes another benchmark (`--benchmark`).
DEFAULT = get_benchmark(DEFAULT_BENCHMARK)
CAMERA_TYPES = DEFAULT.camera_names
FREE_LABEL = DEFAULT.free_label
# RGB colours per class id (0..16 for Occ3D-nuScenes), then free (white).
PALETTE = class_palette(DEFAULT.num_classes)


class GridFileError(ValueError):
    """An occupancy file whose grid does not fit the benchmark; the message names the file and the fix."""
    user_error = True  # engine/cli.py prints the message without a traceback


def bev_image(semantics, free_label=FREE_LABEL, palette=PALETTE):
    """[X, Y, Z] labels -> [Y, X, 3] uint8 image of the top-most occupied voxel per column, y up."""
    occupied = semantics != free_label
    z_top = semantics.shape[2] - 1 - np.argmax(occupied[:, :, ::-1], axis=2)  # highest occupied z
    top = np.take_along_axis(semantics, z_top[..., None], axis=2)[..., 0]
    top = np.where(occupied.any(axis=2), top, free_label)
    return palette[top.T[::-1]]  # rows = y (flipped so +y is up), columns = x


def check_grid(grid, bench, path):
    """`grid` if it is an [X, Y, Z] grid of `bench`'s shape with labels 0..free_label; else GridFileError naming
    `path`."""
    grid = np.asarray(grid)
    if grid.shape != bench.grid_shape:
        raise GridFileError(f'{path}: grid of shape {list(grid.shape)}, but benchmark {bench.name} has '
                            f'{list(bench.grid_shape)} (x, y, z); give the benchmark of the file (--benchmark)')
    if grid.size and (grid.min() < 0 or grid.max() > bench.free_label):
        raise GridFileError(f'{path}: labels up to {int(grid.max())}, but benchmark {bench.name} has labels '
                            f'0..{bench.free_label} (free = {bench.free_label}); give the benchmark of the file '
                            f'(--benchmark)')
    return grid


def load_prediction(path, bench=DEFAULT):
    """Dense [X, Y, Z] labels of a saved prediction (`sem_pred` + `occ_loc`, val.py --save-dir) or of a
    file holding a dense `semantics` grid (a label file)."""
    from evaluation.predictions import read_prediction
    if not os.path.isfile(path):
        raise FileNotFoundError(f'prediction file not found: {path}')
    with np.load(path, allow_pickle=False) as f:
        dense = f['semantics'] if 'semantics' in f.files else None
    if dense is None:
        pred = read_prediction(path)
        try:
            dense = dense_from_sparse(pred['sem_pred'], pred['occ_loc'], bench.grid_shape, bench.free_label)
        except ValueError as exc:
            raise GridFileError(f'{path}: {exc} (benchmark {bench.name}; give the benchmark of the file with '
                                f'--benchmark)') from None
    return check_grid(dense, bench, path)


def load_gt(path, bench=DEFAULT):
    """(semantics, camera mask or None) of a label file of `bench`."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f'label file not found: {path}')
    arrays = ['semantics'] + (['mask_camera'] if bench.camera_mask else [])
    labels = bench.read_labels(path, arrays)
    mask = labels['mask_camera'].astype(bool) if bench.camera_mask else None
    return check_grid(labels['semantics'], bench, path), mask


def draw(pred, gt, mask=None, out='occupancy.png', title='', bench=DEFAULT):
    """Save a side-by-side PNG of two [X, Y, Z] label grids of `bench`; `mask` hides invisible voxels."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch
    free, palette = bench.free_label, class_palette(bench.num_classes)
    if mask is not None:
        pred = np.where(mask, pred, free)
        gt = np.where(mask, gt, free)
    x0, y0, _, x1, y1, _ = bench.point_cloud_range
    fig, axes = plt.subplots(1, 2, figsize=(12, 7.0))
    for ax, grid, name in zip(axes, (pred, gt), ('prediction', 'ground truth')):
        ax.imshow(bev_image(grid, free, palette), extent=(x0, x1, y0, y1), interpolation='nearest')
        ax.set_title(name)
        ax.set_xlabel('x (m, forward)')
        ax.set_ylabel('y (m, left)')
        ax.plot(0, 0, marker='^', color='k', markersize=8)
    present = sorted(set(np.unique(pred)) | set(np.unique(gt)) - {free})
    handles = [Patch(color=palette[c] / 255.0, label=bench.class_names[c]) for c in present if c != free]
    fig.legend(handles=handles, loc='lower center', ncol=min(len(handles), 6) or 1, fontsize=8)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.11, 1, 0.95))  # the bottom strip holds the class legend
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


# ------------------------------------------------------------------------------ projection view
PANEL_LAYOUT = (('CAM_FRONT_LEFT', 'CAM_FRONT', 'CAM_FRONT_RIGHT'), ('CAM_BACK_LEFT', 'CAM_BACK', 'CAM_BACK_RIGHT'))
# depth colour map: piecewise linear in depth / max_depth through these colours (clipped at 1)
DEPTH_STOPS = (0.0, 0.25, 0.5, 0.75, 1.0)
DEPTH_COLOURS = ((255, 0, 0), (255, 255, 0), (0, 255, 0), (0, 255, 255), (0, 0, 255))
COLOUR_BAR_HEIGHT = 28
MIN_DEPTH = 0.1  # metres; nearer points (and points behind the camera) are not drawn
POINT_DIMS = 5   # nuScenes .pcd.bin: x, y, z, intensity, ring


def depth_colours(depth, max_depth=60.0):
    """uint8 [P, 3] RGB colours of depths (metres) on the DEPTH_STOPS / DEPTH_COLOURS ramp."""
    x = np.clip(np.asarray(depth, dtype=np.float64) / max_depth, 0.0, 1.0)
    table = np.asarray(DEPTH_COLOURS, dtype=np.float64)
    rgb = np.stack([np.interp(x, DEPTH_STOPS, table[:, c]) for c in range(3)], axis=-1)
    return np.round(rgb).astype(np.uint8)


def project_points(points, lidar2img, image_hw, min_depth=MIN_DEPTH):
    """Points [P, >=3] (LiDAR frame) through one 4x4 lidar2img (rows u*d, v*d, d, 1).

    Returns (uv float64 [K, 2], depth [K], index [K]) of the points with depth > min_depth that land
    inside the H x W image (pixel (i, j) covers u in [i, i+1), v in [j, j+1)).
    """
    pts = np.asarray(points, dtype=np.float64)[:, :3]
    q = np.c_[pts, np.ones(len(pts))] @ np.asarray(lidar2img, dtype=np.float64).T
    depth = q[:, 2]
    front = depth > min_depth
    uv = np.full((len(pts), 2), -1.0)
    uv[front] = q[front, :2] / depth[front, None]
    H, W = image_hw
    keep = front & (uv[:, 0] >= 0) & (uv[:, 0] < W) & (uv[:, 1] >= 0) & (uv[:, 1] < H)
    index = np.nonzero(keep)[0]
    return uv[index], depth[index], index


def draw_points(image, uv, depth, colours, radius=1):
    """Copy of `image` [H, W, 3] with a (2 radius + 1)^2 square per point; the nearest point wins a pixel."""
    out = np.array(image, dtype=np.uint8, copy=True)
    H, W = out.shape[:2]
    if len(uv) == 0:
        return out
    order = np.argsort(depth, kind='stable')  # nearest first
    px = np.floor(uv[order]).astype(np.int64)
    col = np.asarray(colours, dtype=np.uint8)[order]
    d = np.arange(-radius, radius + 1)
    du, dv = [a.ravel() for a in np.meshgrid(d, d)]
    u = (px[:, 0:1] + du[None]).ravel()
    v = (px[:, 1:2] + dv[None]).ravel()
    c = np.repeat(col, len(du), axis=0)
    ok = (u >= 0) & (u < W) & (v >= 0) & (v < H)
    flat = v[ok] * W + u[ok]
    _, first = np.unique(flat, return_index=True)  # first occurrence = nearest point
    out.reshape(-1, 3)[flat[first]] = c[ok][first]
    return out


def _label(img, text):
    from PIL import Image, ImageDraw
    im = Image.fromarray(img)
    draw = ImageDraw.Draw(im)
    box = draw.textbbox((4, 4), text)
    draw.rectangle((box[0] - 3, box[1] - 3, box[2] + 3, box[3] + 3), fill=(0, 0, 0))
    draw.text((4, 4), text, fill=(255, 255, 255))
    return np.asarray(im)


def colour_bar(width, max_depth):
    """[COLOUR_BAR_HEIGHT, width, 3] strip: the depth ramp with a tick every 10 m."""
    from PIL import Image, ImageDraw
    bar = np.zeros((COLOUR_BAR_HEIGHT, width, 3), np.uint8)
    ramp = depth_colours((np.arange(width) + 0.5) / width * max_depth, max_depth)
    bar[:12] = ramp[None]
    im = Image.fromarray(bar)
    draw = ImageDraw.Draw(im)
    for m in np.arange(0, max_depth + 1e-9, 10.0):
        x = int(round(m / max_depth * (width - 1)))
        draw.line((x, 10, x, 14), fill=(255, 255, 255))
        draw.text((min(x + 2, width - 40), 14), f'{m:g} m', fill=(255, 255, 255))
    return np.asarray(im)


def panel_layout(camera_names):
    """Rows of three camera names (None: an empty cell): PANEL_LAYOUT for the six nuScenes cameras (fronts on
    top, as a driver sees them), else the cameras in their order."""
    if set(camera_names) == {cam for row in PANEL_LAYOUT for cam in row}:
        return PANEL_LAYOUT
    names = list(camera_names)
    return tuple(tuple(names[i:i + 3]) + (None,) * max(0, i + 3 - len(names)) for i in range(0, len(names), 3))


def projection_view(images, lidar2imgs, points, colours=None, scale=0.5, max_depth=60.0, radius=1, labels=True,
                    min_depth=MIN_DEPTH):
    """The camera images in rows of three (panel_layout: the six nuScenes cameras in a 2 x 3 grid) with
    `points` drawn on them.

    Args:
        images (dict): camera name -> RGB uint8 [H, W, 3] (all the same size).
        lidar2imgs (dict): camera name -> 4x4 LiDAR -> pixels of that image.
        points (array): [P, >=3] in the LiDAR frame.
        colours (array | None): uint8 [P, 3] per point; default: by depth in each camera.
        scale (float): size of a panel relative to the images; points are projected at full
            resolution and drawn at (u, v) * scale.
        max_depth (float): depth (metres) of the last colour of the ramp.
        radius (int): points are (2 radius + 1)^2 squares of panel pixels.
        labels (bool): camera names in the panels' top-left corners.
    Returns:
        (canvas RGB uint8 [rows h + COLOUR_BAR_HEIGHT, 3 w, 3] with h, w = round(H scale), round(W scale),
        dict camera -> number of points drawn).
    """
    from PIL import Image
    H, W = next(iter(images.values())).shape[:2]
    h, w = int(round(H * scale)), int(round(W * scale))
    layout = panel_layout(images)
    canvas = np.zeros((len(layout) * h + COLOUR_BAR_HEIGHT, 3 * w, 3), np.uint8)
    counts = {}
    for row, names in enumerate(layout):
        for col, cam in enumerate(names):
            if cam is None:
                continue
            img = images[cam]
            if img.shape[:2] != (H, W):
                raise ValueError(f'projection_view: {cam} is {img.shape[1]}x{img.shape[0]}, the others {W}x{H}')
            panel = np.asarray(Image.fromarray(img).resize((w, h), Image.BILINEAR)) if (h, w) != (H, W) else img
            uv, depth, index = project_points(points, lidar2imgs[cam], (H, W), min_depth)
            c = depth_colours(depth, max_depth) if colours is None else np.asarray(colours)[index]
            panel = draw_points(panel, uv * scale, depth, c, radius)
            if labels:
                panel = _label(panel, f'{cam}  ({len(index)} points)')
            canvas[row * h:(row + 1) * h, col * w:(col + 1) * w] = panel
            counts[cam] = len(index)
    canvas[len(layout) * h:] = colour_bar(3 * w, max_depth)
    return canvas, counts


def _find(path, base_dir, cam=None):
    candidates = [path] if os.path.isabs(path) else [path, os.path.join(base_dir, path)]
    if cam is not None:
        candidates.append(os.path.join(base_dir, 'samples', cam, os.path.basename(path)))
    for c in candidates:
        if os.path.isfile(c):
            return c
    raise FileNotFoundError(f'file not found: {path} (tried {candidates})')


def read_infos(info_path):
    """(infos list, is_v2) of a gen_sweep_info.py pickle (`{'infos': [...]}`) or an mmdet3d "info v1.1"
    pickle (`{'data_list': [...]}`)."""
    import pickle
    if not os.path.isfile(info_path):
        raise FileNotFoundError(f'info pickle not found: {info_path}')
    with open(info_path, 'rb') as f:
        data = pickle.load(f)
    if isinstance(data, dict) and 'data_list' in data:
        return data['data_list'], True
    if isinstance(data, dict) and 'infos' in data:
        return data['infos'], False
    raise ValueError(f'{info_path}: neither a gen_sweep_info.py pickle ("infos") nor an mmdet3d info v1.1 '
                     f'pickle ("data_list")')


def sample_geometry(info, v2, base, camera_names=CAMERA_TYPES):
    """Images, projections and LiDAR pose of one info (see load_sample_geometry); `base`: folder of relative names."""
    images, lidar2img = {}, {}
    for cam in camera_names:
        if v2:
            im = info['images'][cam]
            lidar2img[cam] = pad_intrinsic(im['cam2img']) @ np.asarray(im['lidar2cam'], dtype=np.float64)
            images[cam] = _find(im['img_path'], base, cam)
        else:
            c = info['cams'][cam]
            cam2lidar = rigid_transform(c['sensor2lidar_rotation'], c['sensor2lidar_translation'])
            lidar2img[cam] = pad_intrinsic(c['cam_intrinsic']) @ rigid_inverse(cam2lidar)
            images[cam] = _find(c['data_path'], base, cam)
    if v2:
        lidar2ego = np.asarray(info['lidar_points']['lidar2ego'], dtype=np.float64)
        lidar_path = info['lidar_points']['lidar_path']
    else:
        lidar2ego = rigid_transform(info['lidar2ego_rotation'], info['lidar2ego_translation'])
        lidar_path = info['lidar_path']
    try:
        lidar_path = _find(lidar_path, base, 'LIDAR_TOP')
    except FileNotFoundError:
        pass  # only needed when no other points are given
    return dict(token=info.get('token'), images=images, lidar2img=lidar2img, lidar_path=lidar_path,
                lidar2ego=lidar2ego)


def load_sample_geometry(info_path, index=0, token=None, data_dir=None, camera_names=CAMERA_TYPES):
    """Images, projections and LiDAR pose of one sample of an info pickle.

    Accepts the pickles of gen_sweep_info.py (`{'infos': [...]}`: cams with sensor2lidar_* and
    cam_intrinsic) and mmdet3d "info v1.1" pickles (`{'data_list': [...]}`: images with cam2img and
    lidar2cam). Relative file names are looked up as given, under `data_dir` (default: the pickle's
    folder) and under `data_dir/samples/<camera>/`.

    Returns:
        dict(token, images {cam: path}, lidar2img {cam: float64 4x4}, lidar_path, lidar2ego 4x4).
    """
    infos, v2 = read_infos(info_path)
    base = data_dir or os.path.dirname(os.path.abspath(info_path))
    if token is not None:
        matches = [i for i, info in enumerate(infos) if info.get('token') == token]
        if not matches:
            raise KeyError(f'{info_path}: no sample with token {token}')
        index = matches[0]
    if not 0 <= index < len(infos):
        raise IndexError(f'{info_path} holds {len(infos)} samples; --index {index} is out of range')
    return sample_geometry(infos[index], v2, base, camera_names)


def load_lidar_points(path, dims=POINT_DIMS):
    """float32 [N, dims] of a nuScenes LiDAR file (x, y, z first, LiDAR frame)."""
    pts = np.fromfile(path, dtype=np.float32)
    if pts.size % dims:
        raise ValueError(f'{path}: {pts.size} floats is not a multiple of {dims} values per point (--point-dims)')
    return pts.reshape(-1, dims)


def occupied_voxel_centres(semantics, pc_range=DEFAULT.point_cloud_range, voxel_size=DEFAULT.voxel_size, mask=None,
                           free_label=FREE_LABEL):
    """(centres [M, 3] metres in the ego frame, labels [M]) of the non-free voxels of an [X, Y, Z] grid."""
    occ = np.asarray(semantics) != free_label
    if mask is not None:
        occ &= np.asarray(mask, dtype=bool)
    idx = np.argwhere(occ)
    centres = (idx + 0.5) * np.asarray(voxel_size, dtype=np.float64) + np.asarray(pc_range[:3], dtype=np.float64)
    return centres, np.asarray(semantics)[tuple(idx.T)]


def voxel_points_in_lidar(semantics, sample, bench=DEFAULT, mask=None):
    """(centres [M, 3] in the LiDAR frame of `sample` (load_sample_geometry), labels [M]) of the occupied voxels."""
    centres, labels = occupied_voxel_centres(semantics, bench.point_cloud_range, bench.voxel_size, mask,
                                             bench.free_label)
    ego2lidar = np.linalg.inv(sample['lidar2ego'])
    return centres @ ego2lidar[:3, :3].T + ego2lidar[:3, 3], labels


def draw_projection(sample, points, out, colours=None, **kwargs):
    """Read the six images of `sample` (load_sample_geometry), draw `points` (LiDAR frame), write a PNG."""
    from PIL import Image
    images = {cam: np.asarray(Image.open(path).convert('RGB')) for cam, path in sample['images'].items()}
    canvas, counts = projection_view(images, sample['lidar2img'], points, colours=colours, **kwargs)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    Image.fromarray(canvas).save(out)
    return out, counts


def _benchmark_argument(parser):
    from core.benchmarks import benchmark_names
    parser.add_argument('--benchmark', default=DEFAULT_BENCHMARK, choices=benchmark_names(),
                        help=f'the grid, classes and cameras of the files (default {DEFAULT_BENCHMARK})')


def projection_main(argv=None):
    parser = argparse.ArgumentParser(prog='visualize.py projection',
                                     description='six camera images with 3D points projected, coloured by depth')
    parser.add_argument('--info', required=True, help='gen_sweep_info.py or mmdet3d info v1.1 pickle')
    parser.add_argument('--index', type=int, default=0, help='sample index in the pickle (default 0)')
    parser.add_argument('--token', default=None, help='sample token (instead of --index)')
    parser.add_argument('--data-dir', default=None, help='folder for relative file names (default: the pickle\'s)')
    parser.add_argument('--points', default=None, help='LiDAR file, float32 [N, --point-dims] (default: the '
                                                       'sample\'s lidar_path)')
    parser.add_argument('--point-dims', type=int, default=POINT_DIMS)
    parser.add_argument('--occ', default=None, help='occupancy .npz (Occ3D labels or a prediction): draw the '
                                                    'occupied voxel centres instead of LiDAR points')
    parser.add_argument('--camera-mask', action='store_true', help='with --occ: only camera-visible voxels')
    parser.add_argument('--color-by', choices=('depth', 'class'), default='depth', help='class: with --occ only')
    parser.add_argument('--max-depth', type=float, default=60.0)
    parser.add_argument('--scale', type=float, default=0.5, help='panel size relative to the images')
    parser.add_argument('--radius', type=int, default=1, help='points are (2r+1)^2 panel pixels')
    parser.add_argument('--out', default='projection.png')
    _benchmark_argument(parser)
    args = parser.parse_args(argv)
    if args.points and args.occ:
        parser.error('give --points or --occ, not both')
    if args.color_by == 'class' and not args.occ:
        parser.error('--color-by class needs --occ')
    bench = get_benchmark(args.benchmark)
    sample = load_sample_geometry(args.info, args.index, args.token, args.data_dir, bench.camera_names)
    colours = None
    if args.occ:
        sem = load_prediction(args.occ, bench)
        mask = None
        if args.camera_mask:
            with np.load(args.occ) as f:
                if 'mask_camera' not in f.files:
                    parser.error(f'--camera-mask: {args.occ} has no mask_camera')
                mask = check_grid(f['mask_camera'], bench, args.occ).astype(bool)
        points, labels = voxel_points_in_lidar(sem, sample, bench, mask)
        if args.color_by == 'class':
            colours = class_palette(bench.num_classes)[labels]
    else:
        path = args.points or sample['lidar_path']
        if not os.path.isfile(path):
            parser.error(f'LiDAR file not found: {path} (give --points)')
        points = load_lidar_points(path, args.point_dims)
    out, counts = draw_projection(sample, points, args.out, colours=colours, scale=args.scale,
                                  max_depth=args.max_depth, radius=args.radius)
    print(f'wrote {out}: ' + ', '.join(f'{cam} {n}' for cam, n in counts.items()) + ' points drawn')
    return out, counts


def bev_main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--pred', required=True, help='.npz with sem_pred + occ_loc (val.py --save-dir) or semantics')
    parser.add_argument('--gt', required=True, help='label file (Occ3D labels.npz)')
    parser.add_argument('--out', default='occupancy.png')
    parser.add_argument('--camera-mask', action='store_true', help='draw only camera-visible voxels')
    _benchmark_argument(parser)
    args = parser.parse_args(argv)
    for path in (args.pred, args.gt):
        if not os.path.isfile(path):
            parser.error(f'file not found: {path}')
    bench = get_benchmark(args.benchmark)
    gt, mask = load_gt(args.gt, bench)
    out = draw(load_prediction(args.pred, bench), gt, mask if args.camera_mask else None, args.out,
               title=os.path.basename(os.path.dirname(args.gt)), bench=bench)
    print(f'wrote {out}')
    return out


# ------------------------------------------------------------------------------ 3D view
VIEWS = ('chase', 'bev')
VIEW_TITLES = dict(chase='chase camera', bev="bird's-eye camera")
# The ego vehicle as a box in the ego frame (metres; origin on the ground under the rear axle), about the
# size of the nuScenes car (4.1 x 1.7 x 1.6 m).
EGO_BOX = ((-1.0, -0.9, 0.0), (3.0, 0.9, 1.6))
CAPTION_HEIGHT = 22
LEGEND_ENTRY = (150, 20)   # pixels (width, height) per legend entry


def _font(size):
    from PIL import ImageFont
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):  # a Pillow without FreeType has only its fixed bitmap font
        return ImageFont.load_default()


def caption(width, text, height=CAPTION_HEIGHT, size=14):
    """White strip [height, width, 3] with `text` in black at its left."""
    from PIL import Image, ImageDraw
    im = Image.new('RGB', (width, height), (255, 255, 255))
    ImageDraw.Draw(im).text((6, (height - size) // 2), text, fill=(0, 0, 0), font=_font(size))
    return np.asarray(im)


def legend(bench, width):
    """Strip [rows * LEGEND_ENTRY[1], width, 3]: a colour square and the name of every class, then the ego box."""
    from PIL import Image, ImageDraw

    from tools.occ_render import EGO_COLOUR
    palette = class_palette(bench.num_classes)
    entries = [(tuple(int(v) for v in palette[c]), name) for c, name in enumerate(bench.class_names)]
    entries.append((EGO_COLOUR, 'ego vehicle'))
    per_row = max(1, width // LEGEND_ENTRY[0])
    rows = -(-len(entries) // per_row)
    im = Image.new('RGB', (width, rows * LEGEND_ENTRY[1] + 4), (255, 255, 255))
    draw, font = ImageDraw.Draw(im), _font(12)
    for i, (colour, name) in enumerate(entries):
        x, y = 6 + (i % per_row) * LEGEND_ENTRY[0], 2 + (i // per_row) * LEGEND_ENTRY[1]
        draw.rectangle((x, y + 3, x + 12, y + 15), fill=colour, outline=(0, 0, 0))
        draw.text((x + 18, y + 2), name, fill=(0, 0, 0), font=font)
    return np.asarray(im)


def view_camera(view, bench, width):
    """The Camera of one of VIEWS for `bench`'s grid: chase 16:9, bird's-eye square, `width` pixels wide."""
    from tools.occ_render import birds_eye_camera, chase_camera
    if view == 'chase':
        return chase_camera(bench.point_cloud_range, (2 * int(round(width * 9 / 32)), width))
    if view == 'bev':
        return birds_eye_camera(bench.point_cloud_range, (width, width))
    raise ValueError(f'unknown view {view!r}; views: {", ".join(VIEWS)}')


def render_view(grid, bench, view, width=640, mask=None, supersample=2, ego=True):
    """RGB uint8 picture of an [X, Y, Z] grid of `bench` from one of VIEWS (tools/occ_render.py)."""
    from tools.occ_render import render_occupancy
    camera = view_camera(view, bench, width)
    image, _ = render_occupancy(grid, camera, bench.point_cloud_range[:3], bench.voxel_size, bench.free_label,
                                class_palette(bench.num_classes), mask=mask, ego_box=EGO_BOX if ego else None,
                                supersample=supersample)
    return image


def camera_panel(grid, sample, bench=DEFAULT, mask=None, width=1280):
    """The camera images of `sample` (load_sample_geometry) with the occupied voxel centres of `grid` drawn
    in class colours, nearest on top: RGB uint8 [rows h, 3 w, 3] with 3 w ~ `width` (projection_view
    without its depth bar)."""
    from PIL import Image
    images = {cam: np.asarray(Image.open(path).convert('RGB')) for cam, path in sample['images'].items()}
    scale = width / (3 * next(iter(images.values())).shape[1])
    points, labels = voxel_points_in_lidar(grid, sample, bench, mask)
    canvas, _ = projection_view(images, sample['lidar2img'], points, colours=class_palette(bench.num_classes)[labels],
                                scale=scale, radius=1, labels=False)
    canvas = canvas[:-COLOUR_BAR_HEIGHT]
    layout = panel_layout(images)
    h, w = canvas.shape[0] // len(layout), canvas.shape[1] // 3
    for row, names in enumerate(layout):             # the camera names only: the panels are small
        for col, cam in enumerate(names):
            if cam is None:
                continue
            canvas[row * h:(row + 1) * h, col * w:(col + 1) * w] = _label(canvas[row * h:(row + 1) * h,
                                                                                 col * w:(col + 1) * w], cam)
    return canvas


def _fit_width(image, width):
    from PIL import Image
    if image.shape[1] == width:
        return image
    height = int(round(image.shape[0] * width / image.shape[1]))
    return np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR))


def occupancy_figure(pred, gt=None, bench=DEFAULT, views=VIEWS, width=640, mask=None, supersample=2, title='',
                     cameras=None):
    """One picture of a prediction and its ground truth in 3D.

    Layout, top to bottom: `title`; for each of `views` a row [prediction | ground truth] (either alone
    when the other is None), each panel under a caption; `cameras` (an RGB image such as camera_panel's,
    scaled to the figure's width); the class legend.

    Args:
        pred, gt (array | None): [X, Y, Z] label grids of `bench` (checked by the caller: load_prediction,
            load_gt); at least one.
        mask (array | None): bool [X, Y, Z]; voxels where it is false are drawn as free in both grids.
        width (int): pixels per panel; the figure is `width` or 2 `width` wide.
        supersample (int): anti-aliasing factor of the 3D panels.
    Returns:
        RGB uint8 [H, W, 3].
    """
    grids = [(name, grid) for name, grid in (('prediction', pred), ('ground truth', gt)) if grid is not None]
    if not grids:
        raise ValueError('occupancy_figure: give a prediction, a ground truth or both')
    total = width * len(grids)
    rows = [caption(total, title, size=16)] if title else []
    for view in views:
        panels = [np.concatenate([caption(width, f'{name}, {VIEW_TITLES[view]}'),
                                  render_view(grid, bench, view, width, mask, supersample)])
                  for name, grid in grids]
        rows.append(np.concatenate(panels, axis=1))
    if cameras is not None:
        seen = 'prediction' if pred is not None else 'ground truth'
        rows += [caption(total, f'{seen} seen by the cameras (voxel centres)'), _fit_width(cameras, total)]
    rows.append(legend(bench, total))
    return np.concatenate(rows)


def _save_png(image, out):
    from PIL import Image
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    Image.fromarray(image).save(out)
    return out


def render_main(argv=None):
    parser = argparse.ArgumentParser(prog='visualize.py render', description='3D picture (voxels as shaded cubes) '
                                     'of a prediction beside its ground truth, from a chase and a bird\'s-eye camera')
    parser.add_argument('--pred', default=None, help='.npz with sem_pred + occ_loc (val.py --save-dir) or semantics')
    parser.add_argument('--gt', default=None, help='label file (Occ3D labels.npz), drawn beside the prediction '
                                                   '(or alone)')
    parser.add_argument('--camera-mask', action='store_true', help='with --gt: only camera-visible voxels')
    parser.add_argument('--views', nargs='+', choices=VIEWS, default=list(VIEWS))
    parser.add_argument('--width', type=int, default=640, help='pixels per panel (default 640)')
    parser.add_argument('--supersample', type=int, default=2, help='anti-aliasing factor (default 2; 1: off)')
    parser.add_argument('--info', default=None, help='info pickle: also draw the voxels (of the prediction, else of '
                                                     'the ground truth) on the six camera images of the sample '
                                                     '(--index or --token)')
    parser.add_argument('--index', type=int, default=0)
    parser.add_argument('--token', default=None)
    parser.add_argument('--data-dir', default=None, help='folder for relative file names (default: the pickle\'s)')
    parser.add_argument('--out', default='occupancy_3d.png')
    _benchmark_argument(parser)
    args = parser.parse_args(argv)
    if not (args.pred or args.gt):
        parser.error('give --pred, --gt or both')
    if args.camera_mask and not args.gt:
        parser.error('--camera-mask needs --gt (the mask is the label file\'s)')
    bench = get_benchmark(args.benchmark)
    pred = load_prediction(args.pred, bench) if args.pred else None
    gt, mask = load_gt(args.gt, bench) if args.gt else (None, None)
    if args.camera_mask and mask is None:
        parser.error(f'--camera-mask: benchmark {bench.name} has no camera mask')
    mask = mask if args.camera_mask else None
    cameras = None
    if args.info:
        sample = load_sample_geometry(args.info, args.index, args.token, args.data_dir, bench.camera_names)
        cameras = camera_panel(pred if pred is not None else gt, sample, bench, mask,
                               args.width * (2 if pred is not None and gt is not None else 1))
    title = os.path.basename(os.path.dirname(args.gt)) if args.gt else os.path.basename(args.pred)
    figure = occupancy_figure(pred, gt, bench, args.views, args.width, mask, args.supersample, title, cameras)
    out = _save_png(figure, args.out)
    print(f'wrote {out} ({figure.shape[1]}x{figure.shape[0]})')
    return out


# ------------------------------------------------------------------------------ video of a scene
def _scene_of(info):
    return info.get('scene_name') or info.get('scene_token')


def scene_frames(pred_dir, info_path=None, scene=None):
    """The saved predictions of one scene, in time order: a list of dict(token, path, info).

    Without `info_path`: every `.npz` of `pred_dir`, ordered by file name (token = the file's stem, info
    None). With it: the samples of `scene` that have a `<token>.npz` in `pred_dir`, ordered by their
    timestamps; without `scene`, the one scene the folder's predictions belong to (several: an error
    listing them).
    """
    from engine.cli import UserError
    if not os.path.isdir(pred_dir):
        raise FileNotFoundError(f'prediction folder not found: {pred_dir} (write it with val.py --save-dir)')
    files = {name[:-4]: os.path.join(pred_dir, name) for name in os.listdir(pred_dir) if name.endswith('.npz')}
    if not files:
        raise UserError(f'{pred_dir}: holds no <sample token>.npz predictions; write them with val.py --save-dir')
    if info_path is None:
        if scene is not None:
            raise UserError(f'--scene {scene} needs --info (the scene of each sample is in the infos)')
        return [dict(token=t, path=files[t], info=None) for t in sorted(files)]
    infos, _ = read_infos(info_path)
    found = [info for info in infos if info.get('token') in files]
    if not found:
        raise UserError(f'{pred_dir}: none of its {len(files)} predictions is a sample of {info_path}; give the '
                        f'infos of the split the predictions were made on')
    if scene is None:
        scenes = sorted({str(_scene_of(info)) for info in found})
        if len(scenes) > 1:
            counts = ', '.join(f'{s}: {sum(str(_scene_of(i)) == s for i in found)}' for s in scenes[:5])
            raise UserError(f'{pred_dir}: holds predictions of {len(scenes)} scenes ({counts}'
                            f'{", ..." if len(scenes) > 5 else ""}); choose one with --scene')
    else:
        known = sorted({str(_scene_of(info)) for info in infos})
        found = [info for info in found if str(_scene_of(info)) == scene]
        if not found:
            more = ', ...' if len(known) > 5 else ''
            where = (f'{info_path} has no scene {scene} (it has {", ".join(known[:5])}{more})' if scene not in known
                     else f'{pred_dir} holds no prediction of scene {scene}')
            raise UserError(f'{where}; choose a scene with --scene')
    undated = [info['token'] for info in found if 'timestamp' not in info]
    if undated:
        raise UserError(f'{info_path}: the sample {undated[0]} has no timestamp to order the frames by; give the '
                        f'infos of gen_sweep_info.py, or leave out --info to order by file name')
    found.sort(key=lambda info: info['timestamp'])
    return [dict(token=info['token'], path=files[info['token']], info=info) for info in found]


def video_main(argv=None):
    parser = argparse.ArgumentParser(prog='visualize.py video', description='video (mp4 or gif) of the saved '
                                     'predictions of one scene in 3D, beside the ground truth when given')
    parser.add_argument('--pred-dir', required=True, help='folder of <sample token>.npz (val.py --save-dir)')
    parser.add_argument('--info', default=None, help='info pickle: orders the frames by time and selects the scene '
                                                     '(without it: every .npz of the folder, by file name)')
    parser.add_argument('--scene', default=None, help='scene name (with --info; default: the folder\'s only scene)')
    parser.add_argument('--gt-root', default=None, help='label folder (e.g. data/nuscenes/gts), with --info: the '
                                                        'ground truth beside each prediction')
    parser.add_argument('--camera-mask', action='store_true', help='with --gt-root: only camera-visible voxels')
    parser.add_argument('--cameras', action='store_true', help='with --info: the prediction drawn on the six '
                                                               'camera images under the 3D panels')
    parser.add_argument('--data-dir', default=None, help='folder for relative file names (default: the pickle\'s)')
    parser.add_argument('--views', nargs='+', choices=VIEWS, default=list(VIEWS))
    parser.add_argument('--width', type=int, default=480, help='pixels per panel (default 480)')
    parser.add_argument('--supersample', type=int, default=1, help='anti-aliasing factor (default 1: off)')
    parser.add_argument('--fps', type=float, default=2.0, help='frames per second (default 2: nuScenes key frames)')
    parser.add_argument('--out', default='scene.mp4', help='.mp4 (H.264, imageio-ffmpeg) or .gif (Pillow)')
    _benchmark_argument(parser)
    args = parser.parse_args(argv)
    if (args.gt_root or args.cameras) and not args.info:
        parser.error('--gt-root and --cameras need --info (the samples\' label files and cameras are in the infos)')
    if args.camera_mask and not args.gt_root:
        parser.error('--camera-mask needs --gt-root (the mask is the label files\')')
    from tqdm import tqdm

    from tools.video import VIDEO_SUFFIXES, VideoError, write_video
    if os.path.splitext(args.out)[1].lower() not in VIDEO_SUFFIXES:
        raise VideoError(f'--out {args.out}: name it .mp4 (H.264) or .gif')
    bench = get_benchmark(args.benchmark)
    if args.camera_mask and not bench.camera_mask:
        parser.error(f'--camera-mask: benchmark {bench.name} has no camera mask')
    frames = scene_frames(args.pred_dir, args.info, args.scene)
    v2 = read_infos(args.info)[1] if args.cameras else None
    base = args.data_dir or (os.path.dirname(os.path.abspath(args.info)) if args.info else None)

    def render(index, frame):
        info = frame['info']
        pred = load_prediction(frame['path'], bench)
        gt = mask = None
        if args.gt_root:
            gt, mask = load_gt(bench.label_path(info, args.gt_root), bench)
        mask = mask if args.camera_mask else None
        cameras = camera_panel(pred, sample_geometry(info, v2, base, bench.camera_names), bench, mask,
                               args.width * (2 if gt is not None else 1)) if args.cameras else None
        scene = f'{_scene_of(info)}  ' if info is not None and _scene_of(info) else ''
        title = f'{scene}{frame["token"]}  ({index + 1}/{len(frames)})'
        return occupancy_figure(pred, gt, bench, args.views, args.width, mask, args.supersample, title, cameras)

    bar = tqdm(frames, desc='frames', unit='frame', disable=not sys.stderr.isatty())
    count = write_video((render(i, f) for i, f in enumerate(bar)), args.out, fps=args.fps)
    print(f'wrote {args.out}: {count} frames at {args.fps:g} fps')
    return args.out, count


def main(argv=None):
    """`visualize.py projection|render|video ...`; anything else (or `bev ...`) draws the BEV picture."""
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = dict(projection=projection_main, render=render_main, video=video_main, bev=bev_main)
    if argv and argv[0] in commands:
        return commands[argv[0]](argv[1:])
    return bev_main(argv)


if __name__ == '__main__':
    from engine.cli import entry_point
    entry_point(main, 'visualize.py')
