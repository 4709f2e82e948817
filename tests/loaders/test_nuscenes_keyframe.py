"""One real nuScenes keyframe (../shared/data) through tables -> gen_sweep_info.py -> NuScenesOccDataset -> pipelines.

The references are the keyframe's own numbers in its mmdet3d "info v1.1" pickle: the calibration
(`cam2img`, `lidar2cam`, `cam2ego`, `ego2global`, `lidar2ego`) and, independent of any projection
code here, the 3D boxes with their per-camera `center_2d` / `depth` that mmdetection3d's converter
computed from the nuScenes tables. The sample is built with the pipelines of
configs/_base_/ops_r50_704x256_8f.py (1600x900 -> 704x256; 8 frames).

The sample is the only one of its (one-sample) scene here: gen_sweep_info.py gives it no camera
sweeps and no LiDAR sweeps, and the sweep loader repeats the key frame for all 7 history frames.
There is no Occ3D grid for it, so the real grid of another sample stands in as its labels file.
"""
import os.path as osp
import pickle

import cv2
import numpy as np
import pytest
from mmcv import Config

import real_data
from real_data import CAMERAS as CAMERA_TYPES

BASE_CONFIG = osp.join(real_data.REPO_ROOT, 'configs', '_base_', 'ops_r50_704x256_8f.py')
T, N = 8, 6
FH, FW = 256, 704
# the test-time augmentation (docs/method.md, "Image augmentation"), by hand: r = max(256/900, 704/1600) = 0.44,
# resized to 704x396, crop (0, 140, 704, 396)
TEST_RESIZE, TEST_CROP = 0.44, (0, 140)
# The v1.1 pickle stores its 4x4 matrices in float32: each 3x3 rotation block lies within R32 = 3 * 2^-25 (nine
# entries of at most half an ulp below 1; Frobenius norm) of a rotation, and the nuScenes tables written from it
# (real_data.write_nuscenes_tables) hold the nearest rotations, which are no farther. Rotations composed through
# the tables therefore carry up to R32 per factor (2 R32 per re-projected product), and translations that much
# times their lever arms (the sensors sit <= 2.3 m from the ego origin, boxes <= 81 m from the LiDAR).
R32 = 3 * 2.0 ** -25
# lidar2img = K [R | t] through the tables vs the pickle: <= 15 R32 on R and 22 R32 m on t (see the lidar2cam
# check below), times |K row|_1 <= 2082 px, relative to max |lidar2img| >= 838: 4.9e-6; the float32 storage adds
# 2^-24 = 6e-8
LIDAR2IMG_REL = 5e-6


def ida(resize, x0, y0, flip=False):
    """Pixel map of resize -> crop -> (flip) as a 4x4 acting on lidar2img rows (u d, v d, d, 1)."""
    m = np.eye(4)
    m[0, 0], m[1, 1], m[0, 2], m[1, 2] = resize, resize, -x0, -y0
    if flip:
        m[0] = -m[0]
        m[0, 2] += FW
    return m


def config():
    return Config.fromfile(BASE_CONFIG)


def dataset(infos, pipeline, test_mode):
    return real_data.keyframe_dataset(infos, config(), pipeline, test_mode)


def project(lidar2img, points):
    """float64 projection of [P, 3] LiDAR points: (uv [P, 2], depth [P])."""
    q = np.c_[points, np.ones(len(points))] @ np.asarray(lidar2img, dtype=np.float64).T
    return q[:, :2] / q[:, 2:3], q[:, 2]


def box_centres(info):
    return np.array([i['bbox_3d'][:3] for i in info['instances']], dtype=np.float64)


def check_boxes(info, lidar2imgs, pixel_map, image_wh):
    """Box centres through our lidar2img vs cam_instances' center_2d mapped by `pixel_map`.

    The centre is `bbox_3d[:3]` of `instances` (the box's geometric centre, whatever the shared README
    calls it: it is the point whose projection mmdetection3d stored as center_2d).

    Returns (max pixel error, max depth error, number of boxes compared). Also checks the cameras:
    every box listed for a camera is in front of it, and every labelled box whose centre lands inside
    that camera's original 1600x900 image is listed for it."""
    centres = box_centres(info)
    labels = np.array([i['bbox_label_3d'] for i in info['instances']])
    max_px = max_depth = 0.0
    count = 0
    for n, cam in enumerate(CAMERA_TYPES):
        uv, depth = project(lidar2imgs[n], centres)
        listed = real_data.match_cam_instances(info, cam)
        for k, ci in zip(listed, info['cam_instances'][cam]):
            c2d = np.asarray(ci['center_2d'], dtype=np.float64)
            expected = pixel_map[:2, :2] @ c2d + pixel_map[:2, 2]
            max_px = max(max_px, float(np.abs(uv[k] - expected).max()))
            max_depth = max(max_depth, abs(float(depth[k]) - ci['depth']))
            assert depth[k] > 0, (cam, k)
            count += 1
        # back to the original image's pixels through the inverse of the pixel map
        orig = (uv - pixel_map[:2, 2]) @ np.linalg.inv(pixel_map[:2, :2]).T
        inside = (depth > 0) & (orig[:, 0] >= 0) & (orig[:, 0] < image_wh[0]) & (orig[:, 1] >= 0) & \
            (orig[:, 1] < image_wh[1]) & (labels >= 0)
        missing = sorted(set(np.nonzero(inside)[0]) - set(listed))
        assert not missing, f'{cam}: boxes {missing} project into the image but are not in its cam_instances'
    assert count == sum(len(v) for v in info['cam_instances'].values()) == 84
    return max_px, max_depth, count


# ---------------------------------------------------------------------------------- tables and infos
def test_tables_load_with_the_devkit_and_keep_the_calibration(real_keyframe, real_keyframe_infos):
    from nuscenes.nuscenes import NuScenes
    from pyquaternion import Quaternion
    ns = real_keyframe_infos
    nusc = NuScenes(version=ns.version, dataroot=ns.root, verbose=False)
    assert [s['name'] for s in nusc.scene] == ['scene-0061'] and len(nusc.sample) == 1
    sample = nusc.get('sample', ns.sample_token)
    assert sorted(sample['data']) == sorted(CAMERA_TYPES + ('LIDAR_TOP',))

    def pose(sd_token):
        sd = nusc.get('sample_data', sd_token)
        cs = nusc.get('calibrated_sensor', sd['calibrated_sensor_token'])
        ep = nusc.get('ego_pose', sd['ego_pose_token'])
        m = lambda r, t: np.r_[np.c_[Quaternion(r).rotation_matrix, t], [[0, 0, 0, 1]]]  # noqa: E731
        return m(ep['rotation'], ep['translation']) @ m(cs['rotation'], cs['translation']), cs

    lidar2global, _ = pose(sample['data']['LIDAR_TOP'])
    info = real_keyframe.info
    e2g, l2e = np.asarray(info['ego2global']), np.asarray(info['lidar_points']['lidar2ego'])
    # the devkit's matrices are the tables' nearest rotations (<= R32 from the pickle's blocks each) with the
    # pickle's translations: <= 2 R32 = 1.8e-7 on R, R32 x |t_lidar2ego| (2.07 m) = 1.8e-7 m on t
    np.testing.assert_allclose(lidar2global, e2g @ l2e, atol=2e-7)
    for cam in CAMERA_TYPES:
        cam2global, cs = pose(sample['data'][cam])
        # global -> camera -> back: the tables reproduce the keyframe's lidar2cam (through both ego poses). The
        # camera's ego pose is the nearest rotation of a product of four pickle blocks (<= 8 R32 from the true one),
        # with cam2ego, ego2global and lidar2ego (2 R32 each) and the reference's own R32: <= 15 R32 = 1.3e-6 on R;
        # t carries those errors times the ~1 m LiDAR-camera offset and the 2.3 m camera lever arm: <= ~22 R32 = 2e-6
        np.testing.assert_allclose(np.linalg.inv(cam2global) @ lidar2global, info['images'][cam]['lidar2cam'],
                                   atol=2e-6)
        np.testing.assert_array_equal(cs['camera_intrinsic'], info['images'][cam]['cam2img'])


def test_gen_sweep_info_on_a_one_sample_scene(real_keyframe, real_keyframe_infos):
    ns = real_keyframe_infos
    assert ns.written['train_mini'][1] == 1 and ns.written['val_mini'][1] == 0
    with open(ns.ann_file, 'rb') as f:
        data = pickle.load(f)
    assert data['metadata'] == dict(version='v1.0-mini') and len(data['infos']) == 1
    info, ref = data['infos'][0], real_keyframe.info
    assert info['token'] == real_data.SAMPLE_TOKEN and info['scene_name'] == 'scene-0061'
    assert info['timestamp'] == round(ref['timestamp'] * 1e6) == 1532402927647951
    # the first (and only) sample of its scene: no history at all
    assert info['cam_sweeps'] == [] and info['lidar_sweeps'] == []
    assert info['occ_path'] == ns.occ_path and osp.isfile(info['occ_path'])
    assert osp.realpath(info['lidar_path']) == osp.realpath(real_keyframe.lidar_path)
    for cam in CAMERA_TYPES:
        c, im = info['cams'][cam], ref['images'][cam]
        assert osp.realpath(c['data_path']) == osp.realpath(real_keyframe.image_paths[cam])
        assert c['type'] == cam and c['timestamp'] == round(im['timestamp'] * 1e6)
        np.testing.assert_array_equal(c['cam_intrinsic'], im['cam2img'])
        cam2lidar = np.linalg.inv(np.asarray(im['lidar2cam'], dtype=np.float64))
        # the same chain as the devkit check above: <= 15 R32 on R, <= ~22 R32 on t
        np.testing.assert_allclose(c['sensor2lidar_rotation'], cam2lidar[:3, :3], atol=2e-6)
        np.testing.assert_allclose(c['sensor2lidar_translation'], cam2lidar[:3, 3], atol=2e-6)
        cam2global = real_data.camera_ego2global(ref, cam) @ np.asarray(im['cam2ego'], dtype=np.float64)
        # nearest rotations of the camera's ego pose (<= 4 R32 from the product it comes from) and of cam2ego (R32):
        # <= 5 R32 = 4.5e-7 on R; the camera position moves by 4 R32 x |t_cam2ego| (2.3 m) = 8.2e-7 m
        np.testing.assert_allclose(c['sensor2global_rotation'], cam2global[:3, :3].T, atol=2e-6)  # row convention
        np.testing.assert_allclose(c['sensor2global_translation'], cam2global[:3, 3], atol=1e-6)


# ---------------------------------------------------------------------------------- test pipeline
@pytest.fixture(scope='module')
def keyframe_test_sample(real_keyframe_infos):
    """The sample through the config's test pipeline as it is (offline: every frame's images loaded)."""
    ds = dataset(real_keyframe_infos, 'test_pipeline', test_mode=True)
    assert len(ds) == 1
    return ds, ds[0]


def test_test_pipeline_lidar2img_is_the_calibration_with_the_test_crop(real_keyframe, real_keyframe_infos,
                                                                       keyframe_test_sample):
    """(a) lidar2img = test resize/crop @ cam2img @ lidar2cam for all 48 entries (relative error < 5e-6)."""
    ds, sample = keyframe_test_sample
    meta = sample['img_metas'][0].data
    info = real_keyframe.info
    assert len(meta['lidar2img']) == len(meta['filename']) == len(meta['img_timestamp']) == T * N
    assert meta['img_shape'] == [(FH, FW, 3)] * (T * N)
    pixel_map = ida(TEST_RESIZE, *TEST_CROP)
    worst = 0.0
    for t in range(T):
        for n, cam in enumerate(CAMERA_TYPES):
            ours = np.asarray(meta['lidar2img'][t * N + n], dtype=np.float64)
            ref = pixel_map @ real_data.reference_lidar2img(info, cam)
            rel = np.abs(ours - ref).max() / np.abs(ref).max()
            worst = max(worst, rel)
            assert rel < LIDAR2IMG_REL, (t, cam, rel)
            # no history: every past frame is the key frame again (same file, same time)
            assert osp.realpath(meta['filename'][t * N + n]) == osp.realpath(real_keyframe.image_paths[cam])
            # whole microseconds (the file name's stamp, which write_nuscenes_tables checks against these seconds)
            # over 1e6 on both sides: within an ulp (2.4e-7 s at 1.5e9 s) however the pickle divided; 1 us resolution
            assert meta['img_timestamp'][t * N + n] == pytest.approx(info['images'][cam]['timestamp'], abs=1e-6)
    print(f'\n(a) max relative error of lidar2img: {worst:.2e}')
    img = sample['img'][0].data
    assert tuple(img.shape) == (T * N, 3, FH, FW) and str(img.dtype) == 'torch.uint8'
    for t in range(1, T):
        assert (img[t * N:(t + 1) * N] == img[:N]).all()
    # online (one process, as val.py sets it up): the 6 key-frame images only, the same 48 projections
    from engine.build import set_test_mode
    cfg = set_test_mode(config(), online=True)
    online = dataset(real_keyframe_infos, cfg.data.test.pipeline, test_mode=True)[0]
    assert (online['img'][0].data == img[:N]).all() and online['img'][0].data.shape[0] == N
    assert np.array_equal(np.stack(online['img_metas'][0].data['lidar2img']), np.stack(meta['lidar2img']))


def test_test_pipeline_image_is_the_resized_bottom_crop(real_keyframe, keyframe_test_sample):
    """The 704x256 image is the original shrunk by 0.44 with its top 140 rows cut (OpenCV's area
    resampling as the independent reference; PIL's bicubic differs by a few grey levels)."""
    _, sample = keyframe_test_sample
    img = sample['img'][0].data.numpy()
    for n, cam in enumerate(CAMERA_TYPES):
        orig = cv2.imread(real_keyframe.image_paths[cam])  # BGR
        ref = cv2.resize(orig, (704, 396), interpolation=cv2.INTER_AREA)[140:396]
        ours = img[n].transpose(1, 2, 0)
        diff = np.abs(ours.astype(np.float64) - ref)
        # two uint8 roundings alone differ by 1/3 level on average; the two filters (bicubic over 2 / r source pixels,
        # a box over 1 / r) differ only in detail finer than ~2 source pixels; a misplaced crop is off by tens
        assert diff.mean() < 3.0, (cam, diff.mean())
        # and not, say, a centre crop: 70 rows up, the difference is far larger
        wrong = np.abs(ours.astype(np.float64) - cv2.resize(orig, (704, 396), interpolation=cv2.INTER_AREA)[70:326])
        assert wrong.mean() > 3 * diff.mean(), cam
        # the content sits where the test lidar2img maps it, up to the half-pixel convention of PIL (-0.28 px)
        shift, _ = image_shift(np.ascontiguousarray(ours), orig, ida(TEST_RESIZE, *TEST_CROP))
        # the sub-pixel peak of cv2.phaseCorrelate (a centroid around the integer peak) pulls a fractional shift
        # toward zero by ~0.1-0.15 px on these blurred images; whole-pixel errors of the crop are >= 1 px
        assert np.abs(shift - expected_shift(TEST_RESIZE, *TEST_CROP, False)).max() < 0.3, (cam, shift)


def test_test_pipeline_boxes_project_onto_their_center_2d(real_keyframe, keyframe_test_sample):
    """(b) 3D box centres (bbox_3d x, y, z) through our lidar2img land on cam_instances' center_2d (mapped by the
    test crop) within 0.1 px, with the same depth within 0.2 mm, in the same cameras."""
    _, sample = keyframe_test_sample
    meta = sample['img_metas'][0].data
    max_px, max_depth, count = check_boxes(real_keyframe.info, meta['lidar2img'][:N], ida(TEST_RESIZE, *TEST_CROP),
                                           real_data.IMAGE_WH)
    print(f'\n(b) {count} camera boxes: max centre error {max_px:.4f} px, max depth error {max_depth * 100:.4f} cm')
    assert max_px < BOX_PX and max_depth < BOX_DEPTH


# ---------------------------------------------------------------------------------- training pipeline
# Box centres through lidar2img (K [R | t] with <= 15 R32 on R, 22 R32 m on t) against mmdetection3d's float32
# center_2d / depth: the depth d moves by <= 15 R32 x 81 m + 22 R32 + the float32 storage of the centres and depths
# (<= 1e-5 m) = 1.2e-4 m; u d by <= |K row|_1 (2082 px) x 1.1e-4 m = 0.23 px m, so u by <= (0.23 + 1600 px x
# 1.2e-4) / 8.2 m (the nearest box) = 0.05 px in the original image (the crops scale by r <= 0.55)
BOX_PX, BOX_DEPTH = 0.1, 2e-4
# The fitted pixel map: ours' float32 storage (half an ulp <= 3.1e-5 at entries < 1024) through inverse(ref)'s depth
# column (|.|_1 <= 2.2): <= 6.7e-5; the tables' rotation error w enters as K [w]x K^-1 times r: <= 1800 px x 0.55 x w.
# For this keyframe's pickle w ~ R32 (the relative error that (a) prints), so <= 8.8e-5 more: 1.6e-4 in all (an
# arbitrary float32 pickle could reach 15 R32, ~1e-3)
FIT_TOL = 2e-4


def fit_pixel_map(ours, ref):
    """The 4x4 that maps the calibration's lidar2img to ours (should be a resize/crop/flip)."""
    return np.asarray(ours, dtype=np.float64) @ np.linalg.inv(ref)


def image_shift(aug, orig, pixel_map):
    """Sub-pixel shift (dx, dy) of the augmented image relative to the original warped by `pixel_map`
    (OpenCV, after a blur against aliasing), and the phase-correlation peak."""
    a = cv2.GaussianBlur(cv2.cvtColor(aug, cv2.COLOR_BGR2GRAY).astype(np.float32), (0, 0), 1.0)
    src = cv2.GaussianBlur(cv2.cvtColor(orig, cv2.COLOR_BGR2GRAY).astype(np.float32), (0, 0), 1.0 / pixel_map[1, 1])
    ref = cv2.warpAffine(src, pixel_map[:2, [0, 1, 2]].astype(np.float64), (FW, FH), flags=cv2.INTER_LINEAR)
    # only where the warped original has content (the crop can pass the right edge: zero fill there)
    valid = cv2.warpAffine(np.ones_like(src), pixel_map[:2, [0, 1, 2]], (FW, FH), flags=cv2.INTER_NEAREST) > 0
    cols = np.nonzero(valid.all(0))[0]
    a, ref = a[:, cols[0] + 8:cols[-1] - 8], ref[:, cols[0] + 8:cols[-1] - 8]
    window = cv2.createHanningWindow(a.shape[::-1], cv2.CV_32F)
    (dx, dy), response = cv2.phaseCorrelate(ref, a, window)
    return np.array([dx, dy]), float(response)


def expected_shift(r, x0, y0, flip):
    """Where the image content sits relative to the projection, at the crop centre, by the original's
    conventions (docs/method.md, "Image augmentation", copied as is): the matrix scales by the float r
    while PIL resizes to int(1600 r) x int(900 r) with pixel centres at i + 0.5, and the matrix flips
    u -> 704 - u while the image flips pixel i -> 703 - i. Pixel centres at integers, as OpenCV and the intrinsics."""
    s = np.array([int(1600 * r) / 1600, int(900 * r) / 900])
    centre = (np.array([x0, y0]) + [FW / 2, FH / 2]) / r          # original pixel at the crop centre
    delta = (s - r) * centre + 0.5 * (s - 1)
    if flip:
        delta[0] = -1 - delta[0]
    return delta


def test_training_augmentation_projection_follows_the_image(real_keyframe, real_keyframe_infos):
    """(c) Under the training draw (resize in [0.38, 0.55], bottom crop, random x offset, flip) the
    lidar2img of all 48 images is one resize/crop/flip of the calibration, the boxes land on their
    center_2d mapped by it (< 0.1 px, < 0.2 mm, same cameras), and the image content moved the same way:
    phase correlation against OpenCV's warp of the original finds it within 1.5 px, and within 0.4 px
    of the offset that the original's rounding conventions predict (up to ~1 px, see expected_shift)."""
    ds = dataset(real_keyframe_infos, 'train_pipeline', test_mode=False)
    info = real_keyframe.info
    flips = set()
    for seed in (0, 1, 2, 3):
        np.random.seed(seed)
        sample = ds[0]
        meta = sample['img_metas'].data
        img = sample['img'].data.numpy()
        assert img.shape == (T * N, 3, FH, FW)
        assert sample['voxel_semantics'].shape == (200, 200, 16) and sample['mask_camera'].dtype == bool
        pixel_map = fit_pixel_map(meta['lidar2img'][0], real_data.reference_lidar2img(info, CAMERA_TYPES[0]))
        r, flip = pixel_map[1, 1], bool(pixel_map[0, 0] < 0)
        flips.add(flip)
        assert 0.38 <= r <= 0.55
        # the structure of a resize / crop / flip: only u, v change, by a scale and an integer shift
        x0 = pixel_map[0, 2] - FW if flip else -pixel_map[0, 2]
        y0 = -pixel_map[1, 2]
        np.testing.assert_allclose(pixel_map, ida(r, x0, y0, flip), atol=FIT_TOL)
        assert abs(x0 - round(x0)) < FIT_TOL and abs(y0 - round(y0)) < FIT_TOL  # entries of the same fit
        x0, y0 = round(x0), round(y0)
        assert y0 == int(900 * r) - FH  # bottom crop (bot_pct_lim = 0)
        assert 0 <= x0 <= max(0, int(1600 * r) - FW)
        pixel_map = ida(r, x0, y0, flip)
        for t in range(T):
            for n, cam in enumerate(CAMERA_TYPES):
                ref = pixel_map @ real_data.reference_lidar2img(info, cam)
                ours = np.asarray(meta['lidar2img'][t * N + n], dtype=np.float64)
                # as (a), and r comes from the fit (its error is ~1e-7 of r)
                assert np.abs(ours - ref).max() / np.abs(ref).max() < 2 * LIDAR2IMG_REL, (t, cam)
                if t:
                    assert np.array_equal(img[t * N + n], img[n])  # the key frame repeated
        max_px, max_depth, _ = check_boxes(info, meta['lidar2img'][:N], pixel_map, real_data.IMAGE_WH)
        assert max_px < BOX_PX and max_depth < BOX_DEPTH
        quirk = expected_shift(r, x0, y0, flip)
        shifts, residuals = [], []
        for n, cam in enumerate(CAMERA_TYPES):
            orig = cv2.imread(real_keyframe.image_paths[cam])
            aug = np.ascontiguousarray(img[n].transpose(1, 2, 0))
            shift, response = image_shift(aug, orig, pixel_map)
            _, wrong_response = image_shift(aug, orig, ida(r, x0, y0, not flip))
            # the mirrored warp leaves two unrelated images, whose correlation peak is that of noise
            assert response > 2 * wrong_response, (cam, response, wrong_response)
            shifts.append(np.hypot(*shift))
            residuals.append(np.abs(shift - quirk).max())
        print(f'\n(c) seed {seed}: r={r:.4f} crop=({x0}, {y0}) flip={flip}: box centres max {max_px:.4f} px, depth '
              f'max {max_depth * 100:.4f} cm; image vs projection: shift max {max(shifts):.3f} px, predicted '
              f'({quirk[0]:+.2f}, {quirk[1]:+.2f}) px, residual max {max(residuals):.3f} px')
        # shifts: the conventions' offset (up to ~1.1 px for r in [0.38, 0.55], see expected_shift) plus the phase
        # correlation's centroid bias (~0.15 px); residuals: that bias and the warp's interpolation
        assert max(shifts) < 1.5 and max(residuals) < 0.4
    assert flips == {True, False}
