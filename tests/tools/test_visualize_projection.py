"""tools/visualize.py's projection view: points drawn where a hand-built pinhole rig puts them, the CLI on
both info formats, and, on the real keyframe of ../shared/data, LiDAR points inside the annotated 3D
boxes landing inside those boxes' 2D boxes (mmdetection3d's own projection of the box corners)."""
import math
import os.path as osp
import pickle

import numpy as np
import pytest
from PIL import Image

import real_data
from tools import visualize as vis

H, W = 90, 160
F, CX, CY = 120.0, 80.0, 45.0
YAWS = dict(CAM_FRONT=0, CAM_FRONT_RIGHT=-60, CAM_FRONT_LEFT=60, CAM_BACK=180, CAM_BACK_LEFT=120, CAM_BACK_RIGHT=-120)
# where each camera's panel sits in the 2 x 3 grid (row, column)
PANELS = dict(CAM_FRONT_LEFT=(0, 0), CAM_FRONT=(0, 1), CAM_FRONT_RIGHT=(0, 2),
              CAM_BACK_LEFT=(1, 0), CAM_BACK=(1, 1), CAM_BACK_RIGHT=(1, 2))
GREY = {cam: 20 + 10 * i for i, cam in enumerate(YAWS)}


def axes(cam):
    """Camera axes in the LiDAR frame: right, down, forward (the camera looks horizontally at its yaw)."""
    y = math.radians(YAWS[cam])
    right, down, forward = [math.sin(y), -math.cos(y), 0.0], [0.0, 0.0, -1.0], [math.cos(y), math.sin(y), 0.0]
    return np.array(right), np.array(down), np.array(forward)


def lidar2cam(cam, centre=(0.0, 0.0, 0.0)):
    right, down, fwd = axes(cam)
    m = np.eye(4)
    m[:3, :3] = np.stack([right, down, fwd])
    m[:3, 3] = -m[:3, :3] @ np.asarray(centre)
    return m


def intrinsic():
    return np.array([[F, 0, CX], [0, F, CY], [0, 0, 1.0]])


def lidar2img(cam, centre=(0.0, 0.0, 0.0)):
    k = np.eye(4)
    k[:3, :3] = intrinsic()
    return k @ lidar2cam(cam, centre)


def point_at(cam, u, v, depth, centre=(0.0, 0.0, 0.0)):
    """The LiDAR-frame point that camera `cam` sees at pixel (u, v) with that depth (inverse pinhole)."""
    right, down, fwd = axes(cam)
    return np.asarray(centre) + depth * (fwd + (u - CX) / F * right + (v - CY) / F * down)


def ramp(depth, max_depth=60.0):
    """The documented colour ramp, evaluated by hand: red, yellow, green, cyan, blue at 0, 1/4, .., 1."""
    x = min(max(depth / max_depth, 0.0), 1.0)
    stops = [(255, 0, 0), (255, 255, 0), (0, 255, 0), (0, 255, 255), (0, 0, 255)]
    i = min(int(x * 4), 3)
    f = x * 4 - i
    return tuple(int(round(a + f * (b - a))) for a, b in zip(stops[i], stops[i + 1]))


# one point per camera (pixel, depth), plus a farther point hidden behind the FRONT one; |u - CX| < 59 px
# keeps each point out of the neighbouring cameras (60 degrees apart, half field of view 33.7 degrees)
POINTS = dict(CAM_FRONT=(40.3, 30.7, 15.0), CAM_FRONT_RIGHT=(100.9, 60.2, 30.0), CAM_FRONT_LEFT=(30.5, 70.5, 7.5),
              CAM_BACK=(125.2, 30.9, 45.0), CAM_BACK_LEFT=(60.4, 44.3, 75.0), CAM_BACK_RIGHT=(130.6, 80.4, 52.5))


def synthetic_case():
    images = {cam: np.full((H, W, 3), GREY[cam], np.uint8) for cam in YAWS}
    mats = {cam: lidar2img(cam) for cam in YAWS}
    pts = [point_at(cam, *POINTS[cam]) for cam in YAWS]
    pts.append(point_at('CAM_FRONT', 40.3, 30.7, 25.0))   # same pixel as the FRONT point, farther: hidden
    return images, mats, np.array(pts)


def test_depth_colours_follow_the_documented_ramp():
    depths = np.array([0.0, 7.5, 15.0, 22.5, 30.0, 45.0, 52.5, 60.0, 75.0, -1.0])
    np.testing.assert_array_equal(vis.depth_colours(depths, 60.0), [ramp(d) for d in depths])
    assert tuple(vis.depth_colours([15.0])[0]) == (255, 255, 0) and tuple(vis.depth_colours([30.0])[0]) == (0, 255, 0)


def test_project_points_keeps_points_in_front_and_inside():
    m = lidar2img('CAM_FRONT')
    pts = np.array([point_at('CAM_FRONT', 10.25, 20.5, 12.0),     # inside
                    point_at('CAM_FRONT', 0.0, 0.0, 5.0),          # on the top-left corner: inside
                    point_at('CAM_FRONT', W, 10.0, 5.0),           # u = W: outside
                    point_at('CAM_FRONT', 50.0, -0.01, 5.0),       # above the image
                    point_at('CAM_FRONT', 50.0, 40.0, 0.05),       # nearer than MIN_DEPTH
                    -point_at('CAM_FRONT', 50.0, 40.0, 8.0)])      # behind the camera
    uv, depth, index = vis.project_points(pts, m, (H, W))
    np.testing.assert_array_equal(index, [0, 1])
    # float64 inverse pinhole and projection: ~10 roundings of terms <= (F + CX) x 12 m = 2400 px m, divided by
    # depths >= 5 m: <= 10 x 1.1e-16 x 2400 / 5 = 5e-13 px; the depth sums terms <= 12 m: ~1e-14 m
    np.testing.assert_allclose(uv, [[10.25, 20.5], [0.0, 0.0]], atol=1e-11)
    np.testing.assert_allclose(depth, [12.0, 5.0], atol=1e-13)


@pytest.mark.parametrize('scale,radius', [(1.0, 0), (0.5, 1)])
def test_projection_view_puts_points_where_expected(scale, radius):
    images, mats, pts = synthetic_case()
    canvas, counts = vis.projection_view(images, mats, pts, scale=scale, radius=radius, labels=False)
    h, w = int(round(H * scale)), int(round(W * scale))
    assert canvas.shape == (2 * h + vis.COLOUR_BAR_HEIGHT, 3 * w, 3) and canvas.dtype == np.uint8
    assert counts == {cam: (2 if cam == 'CAM_FRONT' else 1) for cam in YAWS}
    for cam, (row, col) in PANELS.items():
        panel = canvas[row * h:(row + 1) * h, col * w:(col + 1) * w].astype(int)
        u, v, depth = POINTS[cam]
        pu, pv = int(math.floor(u * scale)), int(math.floor(v * scale))
        expected = np.full((h, w, 3), GREY[cam])
        expected[max(pv - radius, 0):pv + radius + 1, max(pu - radius, 0):pu + radius + 1] = ramp(depth)
        # exactly one square in the point's colour (the nearer FRONT point hides the farther one), grey elsewhere
        np.testing.assert_array_equal(panel, expected, err_msg=cam)


def test_projection_view_colours_and_labels_options():
    images, mats, pts = synthetic_case()
    colours = np.zeros((len(pts), 3), np.uint8)
    colours[:, 2] = 200
    canvas, _ = vis.projection_view(images, mats, pts, colours=colours, scale=1.0, radius=0, labels=True)
    u, v, _ = POINTS['CAM_BACK']
    assert tuple(canvas[H + int(v), W + int(u)]) == (0, 0, 200)
    # the camera name sits on a black box in the panel's top-left corner (its text covers well under half the box)
    assert (canvas[2:14, 2:60] == 0).all(-1).mean() > 0.5
    with pytest.raises(ValueError, match='CAM_BACK'):
        vis.projection_view(dict(images, CAM_BACK=np.zeros((10, 10, 3), np.uint8)), mats, pts)


def write_synthetic_sample(tmp_path):
    """Six PNG images, a LiDAR file and a gen_sweep_info-style pickle for the rig above (LiDAR 1.8 m above the ego)."""
    points = np.zeros((len(YAWS), 5), np.float32)
    cams = {}
    for n, cam in enumerate(YAWS):
        path = tmp_path / f'{cam}.png'
        Image.fromarray(np.full((H, W, 3), GREY[cam], np.uint8)).save(path)
        cam2lidar = np.linalg.inv(lidar2cam(cam))
        cams[cam] = dict(data_path=str(path), type=cam, timestamp=0, cam_intrinsic=intrinsic(),
                         sensor2lidar_rotation=cam2lidar[:3, :3], sensor2lidar_translation=cam2lidar[:3, 3])
        points[n, :3] = point_at(cam, *POINTS[cam])
    points.tofile(tmp_path / 'lidar.pcd.bin')
    info = dict(token='t0', lidar_path=str(tmp_path / 'lidar.pcd.bin'), cams=cams,
                lidar2ego_translation=[0.0, 0.0, 1.8], lidar2ego_rotation=[1.0, 0.0, 0.0, 0.0])
    with open(tmp_path / 'infos.pkl', 'wb') as f:
        pickle.dump(dict(infos=[info], metadata=dict(version='v1.0-mini')), f)
    return tmp_path / 'infos.pkl'


def test_cli_draws_the_lidar_file_of_a_gen_sweep_info_pickle(tmp_path):
    pkl = write_synthetic_sample(tmp_path)
    out, counts = vis.main(['projection', '--info', str(pkl), '--out', str(tmp_path / 'p.png'), '--scale', '1',
                            '--radius', '0'])
    assert counts == {cam: 1 for cam in YAWS}
    png = np.asarray(Image.open(out).convert('RGB'))
    assert png.shape == (2 * H + vis.COLOUR_BAR_HEIGHT, 3 * W, 3)
    for cam, (row, col) in PANELS.items():
        u, v, depth = POINTS[cam]
        assert tuple(png[row * H + int(v), col * W + int(u)]) == ramp(depth), cam
    with pytest.raises(SystemExit):
        vis.main(['projection', '--info', str(pkl), '--color-by', 'class'])   # class colours need --occ


def test_cli_draws_occupied_voxel_centres_in_class_colours(tmp_path):
    pkl = write_synthetic_sample(tmp_path)
    sem = np.full((200, 200, 16), vis.FREE_LABEL, np.uint8)
    # voxel (130, 103, 4): centre (12.2, 1.4, 0.8) m in the ego frame = (12.2, 1.4, -1.0) m in the LiDAR frame
    sem[130, 103, 4] = 4  # car
    np.savez(tmp_path / 'labels.npz', semantics=sem, mask_camera=np.ones_like(sem), mask_lidar=np.ones_like(sem))
    out, counts = vis.main(['projection', '--info', str(pkl), '--occ', str(tmp_path / 'labels.npz'), '--color-by',
                            'class', '--out', str(tmp_path / 'o.png'), '--scale', '1', '--radius', '0'])
    assert counts['CAM_FRONT'] == 1 and sum(counts.values()) == 1
    x, y, z = 12.2, 1.4, -1.0
    u, v = CX + F * (-y) / x, CY + F * (-z) / x  # camera right = -y, down = -z, forward = x
    png = np.asarray(Image.open(out).convert('RGB'))
    assert tuple(png[int(v), W + int(u)]) == tuple(vis.PALETTE[4])


# ---------------------------------------------------------------------------------- the real keyframe
def points_in_box(points, box):
    """Mask of LiDAR points inside a box (x, y, z, dx, dy, dz, yaw about z) of the v1.1 `instances`.

    (x, y, z) is the box's geometric centre: that is what the 2D boxes of `cam_instances` (the
    projected corners) and the annotations' `num_lidar_pts` agree with (see the test below); the
    shared data's README calls it the bottom-face centre, which is wrong by half a box height."""
    x, y, z, dx, dy, dz, yaw = box
    p = points[:, :3].astype(np.float64) - [x, y, z]
    c, s = math.cos(yaw), math.sin(yaw)
    lx, ly = c * p[:, 0] + s * p[:, 1], -s * p[:, 0] + c * p[:, 1]
    return (np.abs(lx) <= dx / 2) & (np.abs(ly) <= dy / 2) & (np.abs(p[:, 2]) <= dz / 2)


def test_real_keyframe_lidar_points_in_boxes_match_the_annotations(real_keyframe):
    """The real LiDAR file (read by the tool) and the real boxes agree: the points inside each box are
    the annotation's own `num_lidar_pts` (nuScenes counted them from this sweep) for most boxes."""
    points = vis.load_lidar_points(real_keyframe.lidar_path)
    ours = np.array([points_in_box(points, i['bbox_3d']).sum() for i in real_keyframe.info['instances']])
    theirs = np.array([i['num_lidar_pts'] for i in real_keyframe.info['instances']])
    print(f'\npoints in boxes: {ours.sum()} here, {theirs.sum()} annotated; {np.sum(ours == theirs)} of '
          f'{len(ours)} boxes equal')
    # nuScenes counted with its own box test in the global frame; the boxes here are the v1.1 LiDAR-frame boxes
    # (converted, float32), so points close to a face can fall either way: most boxes agree
    # exactly (61 of 69 here), the totals within 3% and each box within max(2 points, 10%); a wrong box convention
    # (e.g. the bottom-face centre) or a wrong frame moves whole halves of the boxes' points
    assert np.sum(ours == theirs) >= 55 and abs(int(ours.sum()) - int(theirs.sum())) < 0.03 * theirs.sum()
    assert np.all(np.abs(ours - theirs) <= np.maximum(2, 0.1 * theirs))


def test_real_keyframe_lidar_points_land_on_the_annotated_objects(real_keyframe, tmp_path):
    """Real LiDAR sweep, real calibration: every LiDAR point inside an annotated 3D box that the tool
    projects into a camera lands inside that box's 2D box in that camera (mmdetection3d's projection of
    the box corners, clipped to the image), and the box is listed for that camera."""
    sample = vis.load_sample_geometry(real_data.KEYFRAME_PKL)
    points = vis.load_lidar_points(sample['lidar_path'])
    assert points.shape == (34688, 5) and points.dtype == np.float32
    info = real_keyframe.info
    checked = boxes_seen = 0
    for cam in vis.CAMERA_TYPES:
        listed = real_data.match_cam_instances(info, cam)
        uv, depth, index = vis.project_points(points, sample['lidar2img'][cam], (900, 1600))
        for k, inst in enumerate(info['instances']):
            inside = points_in_box(points[index], inst['bbox_3d'])
            if not inside.any():
                continue
            if inst['bbox_label_3d'] < 0:
                continue  # classes outside the 10 detection classes have no camera boxes
            assert k in listed, f'{cam}: LiDAR points of box {k} project into the image but it is not listed'
            x1, y1, x2, y2 = info['cam_instances'][cam][listed.index(k)]['bbox']
            p = uv[inside]
            # points inside a box project inside the hull of its projected corners; mmdetection3d projected them with
            # the float64 calibration, we with the pickle's float32 one (R32 = 8.9e-8 rad x f = 1266 px ~ 1e-4 px), and
            # the float32 boxes admit points within ~1e-6 m of a face (< 1e-3 px at >= 1 m)
            slack = 0.01
            assert (p[:, 0] >= x1 - slack).all() and (p[:, 0] <= x2 + slack).all(), (cam, k)
            assert (p[:, 1] >= y1 - slack).all() and (p[:, 1] <= y2 + slack).all(), (cam, k)
            checked += int(inside.sum())
            boxes_seen += 1
    assert boxes_seen >= 40 and checked >= 400, (boxes_seen, checked)
    out, counts = vis.draw_projection(sample, points, str(tmp_path / 'keyframe.png'))
    assert Image.open(out).size == (3 * 800, 2 * 450 + vis.COLOUR_BAR_HEIGHT)
    assert all(n > 1000 for n in counts.values()), counts


def test_real_keyframe_both_info_formats_give_the_same_projection(real_keyframe, real_keyframe_infos):
    v2 = vis.load_sample_geometry(real_data.KEYFRAME_PKL)
    ours = vis.load_sample_geometry(real_keyframe_infos.ann_file)
    assert ours['token'] == v2['token'] == real_data.SAMPLE_TOKEN
    for cam in vis.CAMERA_TYPES:
        assert osp.realpath(ours['images'][cam]) == osp.realpath(v2['images'][cam])
        ref = v2['lidar2img'][cam]
        # through the tables' nearest rotations vs the pickle's float32 blocks: <= 4.9e-6 relative (the derivation
        # of LIDAR2IMG_REL in tests/loaders/test_nuscenes_keyframe.py; both sides are float64 here)
        assert np.abs(ours['lidar2img'][cam] - ref).max() / np.abs(ref).max() < 5e-6, cam
    # the tables' nearest rotation of the pickle's float32 block (within 3 x 2^-25 = 8.9e-8), the same translation
    np.testing.assert_allclose(ours['lidar2ego'], v2['lidar2ego'], atol=1e-7)
