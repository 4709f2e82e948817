"""Pictures of occupancy grids and of 3D points seen by the six cameras (PNG).

Bird's-eye view: a predicted grid next to its ground truth.

    python tools/visualize.py --pred demo_output/preds/<token>.npz \
        --gt data/synthetic/gts/<scene>/<token>/labels.npz --out occupancy.png

Each BEV pixel shows the class of the highest occupied voxel of its column (x right, y up, ego at
the centre); free columns are white. With `--camera-mask` only camera-visible voxels are drawn
(what mIoU scores).

Projection view: the six camera images (front row FRONT_LEFT, FRONT, FRONT_RIGHT; back row
BACK_LEFT, BACK, BACK_RIGHT) with 3D points projected through each camera's lidar2img and coloured
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

from core.geometry import dense_from_sparse, pad_intrinsic, rigid_inverse, rigid_transform  # noqa: E402
from core.occ3d import CAMERA_NAMES as CAMERA_TYPES  # noqa: E402
from core.occ3d import CLASS_NAMES as OCC_CLASS_NAMES  # noqa: E402
from core.occ3d import FREE_LABEL, GRID_SHAPE, POINT_CLOUD_RANGE, VOXEL_SIZE  # noqa: E402

# RGB colours per class id (0..16), then free (white).
PALETTE = np.array([
    [0, 0, 0], [255, 120, 50], [255, 192, 203], [255, 255, 0], [0, 150, 245], [0, 255, 255],
    [200, 180, 0], [255, 0, 0], [255, 240, 150], [135, 60, 0], [160, 32, 240], [255, 0, 255],
    [139, 137, 137], [75, 0, 75], [150, 240, 80], [230, 230, 250], [0, 175, 0], [255, 255, 255],
], dtype=np.uint8)


def bev_image(semantics):
    """[X, Y, Z] labels -> [Y, X, 3] uint8 image of the top-most occupied voxel per column, y up."""
    occupied = semantics != FREE_LABEL
    z_top = GRID_SHAPE[2] - 1 - np.argmax(occupied[:, :, ::-1], axis=2)  # highest occupied z
    top = np.take_along_axis(semantics, z_top[..., None], axis=2)[..., 0]
    top = np.where(occupied.any(axis=2), top, FREE_LABEL)
    return PALETTE[top.T[::-1]]  # rows = y (flipped so +y is up), columns = x


def load_prediction(path):
    with np.load(path) as f:
        if 'semantics' in f:
            return f['semantics']
        return dense_from_sparse(f['sem_pred'], f['occ_loc'])


def load_gt(path):
    with np.load(path) as f:
        return f['semantics'], f['mask_camera'].astype(bool)


def draw(pred, gt, mask=None, out='occupancy.png', title=''):
    """Save a side-by-side PNG of two [200, 200, 16] label grids; `mask` hides invisible voxels."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch
    if mask is not None:
        pred = np.where(mask, pred, FREE_LABEL)
        gt = np.where(mask, gt, FREE_LABEL)
    fig, axes = plt.subplots(1, 2, figsize=(12, 7.0))
    for ax, grid, name in zip(axes, (pred, gt), ('prediction', 'ground truth')):
        ax.imshow(bev_image(grid), extent=(-40, 40, -40, 40), interpolation='nearest')
        ax.set_title(name)
        ax.set_xlabel('x (m, forward)')
        ax.set_ylabel('y (m, left)')
        ax.plot(0, 0, marker='^', color='k', markersize=8)
    present = sorted(set(np.unique(pred)) | set(np.unique(gt)) - {FREE_LABEL})
    handles = [Patch(color=PALETTE[c] / 255.0, label=OCC_CLASS_NAMES[c]) for c in present if c != FREE_LABEL]
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


def projection_view(images, lidar2imgs, points, colours=None, scale=0.5, max_depth=60.0, radius=1, labels=True,
                    min_depth=MIN_DEPTH):
    """The six camera images in a 2 x 3 grid with `points` drawn on them.

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
        (canvas RGB uint8 [2 h + COLOUR_BAR_HEIGHT, 3 w, 3] with h, w = round(H scale), round(W scale),
        dict camera -> number of points drawn).
    """
    from PIL import Image
    H, W = next(iter(images.values())).shape[:2]
    h, w = int(round(H * scale)), int(round(W * scale))
    canvas = np.zeros((2 * h + COLOUR_BAR_HEIGHT, 3 * w, 3), np.uint8)
    counts = {}
    for row, names in enumerate(PANEL_LAYOUT):
        for col, cam in enumerate(names):
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
    canvas[2 * h:] = colour_bar(3 * w, max_depth)
    return canvas, counts


def _find(path, base_dir, cam=None):
    candidates = [path] if os.path.isabs(path) else [path, os.path.join(base_dir, path)]
    if cam is not None:
        candidates.append(os.path.join(base_dir, 'samples', cam, os.path.basename(path)))
    for c in candidates:
        if os.path.isfile(c):
            return c
    raise FileNotFoundError(f'file not found: {path} (tried {candidates})')


def load_sample_geometry(info_path, index=0, token=None, data_dir=None):
    """Images, projections and LiDAR pose of one sample of an info pickle.

    Accepts the pickles of gen_sweep_info.py (`{'infos': [...]}`: cams with sensor2lidar_* and
    cam_intrinsic) and mmdet3d "info v1.1" pickles (`{'data_list': [...]}`: images with cam2img and
    lidar2cam). Relative file names are looked up as given, under `data_dir` (default: the pickle's
    folder) and under `data_dir/samples/<camera>/`.

    Returns:
        dict(token, images {cam: path}, lidar2img {cam: float64 4x4}, lidar_path, lidar2ego 4x4).
    """
    import pickle
    with open(info_path, 'rb') as f:
        data = pickle.load(f)
    base = data_dir or os.path.dirname(os.path.abspath(info_path))
    if isinstance(data, dict) and 'data_list' in data:
        infos, v2 = data['data_list'], True
    elif isinstance(data, dict) and 'infos' in data:
        infos, v2 = data['infos'], False
    else:
        raise ValueError(f'{info_path}: neither a gen_sweep_info.py pickle ("infos") nor an mmdet3d info v1.1 '
                         f'pickle ("data_list")')
    if token is not None:
        matches = [i for i, info in enumerate(infos) if info.get('token') == token]
        if not matches:
            raise KeyError(f'{info_path}: no sample with token {token}')
        index = matches[0]
    if not 0 <= index < len(infos):
        raise IndexError(f'{info_path} holds {len(infos)} samples; --index {index} is out of range')
    info = infos[index]
    images, lidar2img = {}, {}
    for cam in CAMERA_TYPES:
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


def load_lidar_points(path, dims=POINT_DIMS):
    """float32 [N, dims] of a nuScenes LiDAR file (x, y, z first, LiDAR frame)."""
    pts = np.fromfile(path, dtype=np.float32)
    if pts.size % dims:
        raise ValueError(f'{path}: {pts.size} floats is not a multiple of {dims} values per point (--point-dims)')
    return pts.reshape(-1, dims)


def occupied_voxel_centres(semantics, pc_range=POINT_CLOUD_RANGE, voxel_size=VOXEL_SIZE[0], mask=None):
    """(centres [M, 3] metres in the ego frame, labels [M]) of the non-free voxels of an [X, Y, Z] grid."""
    occ = np.asarray(semantics) != FREE_LABEL
    if mask is not None:
        occ &= np.asarray(mask, dtype=bool)
    idx = np.argwhere(occ)
    centres = (idx + 0.5) * voxel_size + np.asarray(pc_range[:3], dtype=np.float64)
    return centres, np.asarray(semantics)[tuple(idx.T)]


def draw_projection(sample, points, out, colours=None, **kwargs):
    """Read the six images of `sample` (load_sample_geometry), draw `points` (LiDAR frame), write a PNG."""
    from PIL import Image
    images = {cam: np.asarray(Image.open(path).convert('RGB')) for cam, path in sample['images'].items()}
    canvas, counts = projection_view(images, sample['lidar2img'], points, colours=colours, **kwargs)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    Image.fromarray(canvas).save(out)
    return out, counts


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
    args = parser.parse_args(argv)
    if args.points and args.occ:
        parser.error('give --points or --occ, not both')
    if args.color_by == 'class' and not args.occ:
        parser.error('--color-by class needs --occ')
    sample = load_sample_geometry(args.info, args.index, args.token, args.data_dir)
    colours = None
    if args.occ:
        with np.load(args.occ) as f:
            sem = f['semantics'] if 'semantics' in f else dense_from_sparse(f['sem_pred'], f['occ_loc'])
            mask = f['mask_camera'].astype(bool) if args.camera_mask and 'mask_camera' in f else None
        if args.camera_mask and mask is None:
            parser.error(f'--camera-mask: {args.occ} has no mask_camera')
        centres, labels = occupied_voxel_centres(sem, mask=mask)
        ego2lidar = np.linalg.inv(sample['lidar2ego'])
        points = centres @ ego2lidar[:3, :3].T + ego2lidar[:3, 3]
        if args.color_by == 'class':
            colours = PALETTE[labels]
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
    parser.add_argument('--gt', required=True, help='Occ3D labels.npz')
    parser.add_argument('--out', default='occupancy.png')
    parser.add_argument('--camera-mask', action='store_true', help='draw only camera-visible voxels')
    args = parser.parse_args(argv)
    for path in (args.pred, args.gt):
        if not os.path.isfile(path):
            parser.error(f'file not found: {path}')
    gt, mask = load_gt(args.gt)
    out = draw(load_prediction(args.pred), gt, mask if args.camera_mask else None, args.out,
               title=os.path.basename(os.path.dirname(args.gt)))
    print(f'wrote {out}')
    return out


def main(argv=None):
    """`visualize.py projection ...` draws the projection view; anything else (or `bev ...`) the BEV picture."""
    import sys
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == 'projection':
        return projection_main(argv[1:])
    if argv and argv[0] == 'bev':
        argv = argv[1:]
    return bev_main(argv)


if __name__ == '__main__':
    main()
