"""engine/predictor.py, the Python API for one's own cameras, and tools/predict_rig.py.

Against val.py's inference (the dataset pipeline + the model, one process: online mode) on the synthetic
world's val scene, with the API's inputs built from the scene's infos (intrinsics, camera -> ego, ego
poses), not from the pipeline's projections: the same voxels, exactly, on the CPU, for calls in order (the
history), in single-frame mode and after `reset()`; for the tiny OPS with 2 and 3 frames (3: the history
shorter than T-1 repeats the scene's first frame) and the tiny OPUS-V2. The decoder points against the
head run directly; the image resize and crop against a hand-computed case; the projection against the
real keyframe's boxes (../shared/data); bad inputs; the example script on the real keyframe.
"""
import io
import types
from contextlib import redirect_stdout

import numpy as np
import pytest
import torch

from core.geometry import rigid_inverse, rigid_transform
from engine.predictor import OccupancyPredictor, PredictorInputError
from loaders.pipelines.image_io import imread_bgr
from tiny_ops import TINY_MODEL_CONFIG, TINY_PIPELINES, TINY_TRAIN_DATA_AND_ADAMW, write_tiny_config
from tiny_opusv2 import TINY_OPUSV2_MODEL_CONFIG, TINY_OPUSV2_PIPELINES

EPS32 = float(np.finfo(np.float32).eps)
# Untrained class scores sit near the class bias's prior, sigmoid(-4.595) = 0.01: a threshold of 0.005 lets
# most points (OPS) and voxels (OPUS-V2) through, so that many voxels are compared, not none. The OPS configs
# skip the 3x3x3 closing of the score grid (padding): on one CPU thread it takes 0.65 s of a 0.75 s step, and
# it is the same code after the same scores in both runs compared (the example script runs it).
LOW_THRESHOLD = 0.005
OPS_CONFIG = (TINY_MODEL_CONFIG + TINY_PIPELINES).replace('score_thr=0.5, padding=True',
                                                          f'score_thr={LOW_THRESHOLD}, padding=False')
VARIANTS = {
    'ops-2-frames': OPS_CONFIG,
    'ops-3-frames': OPS_CONFIG.replace('num_frames=2', 'num_frames=3').replace('sweeps_num=1', 'sweeps_num=2'),
    # the history frame two key frames back (1 s), not the previous one
    'ops-2-frames-1s-apart': OPS_CONFIG.replace('sweeps_num=1, test_mode=True)',
                                                'sweeps_num=1, test_mode=True, test_interval=12)'),
    'opusv2-2-frames': (TINY_OPUSV2_MODEL_CONFIG + TINY_OPUSV2_PIPELINES).replace('score_thr=0.25',
                                                                                 f'score_thr={LOW_THRESHOLD}'),
}
# the tiny OPS on any images: its test pipeline alone (no dataset), for the real keyframe and the rig tests
RIG_CONFIG = TINY_MODEL_CONFIG.format(occ_root='unused') + TINY_PIPELINES + 'test_pipeline = _test_pipeline\n'


def online_run(config, checkpoint):
    """val.py's inference of the config's val set in one process (online mode): (infos, results, samples)."""
    from engine.build import build_dataset, build_model, build_test_loader, set_test_mode
    from engine.config import load_config
    from engine.inference import inference
    cfg = load_config(config, required=('model', 'data'))
    set_test_mode(cfg, online=True)
    dataset = build_dataset(cfg.data.val, test_mode=True)
    model = build_model(cfg.model, checkpoint=checkpoint).eval()
    results = inference(model, build_test_loader(dataset, 0, dist=False), dataset, 'cpu', 0, 1)
    return dataset.data_infos, results, [dataset[i] for i in range(len(dataset))]


@pytest.fixture(scope='module', params=sorted(VARIANTS))
def variant(request, synthetic_infos, tmp_path_factory):
    """A tiny model with random weights on the synthetic val scene, val.py's online run of it and its predictor
    (each test calls `reset()` first)."""
    from engine.build import build_model
    from engine.config import load_config
    torch.set_num_threads(1)
    work = tmp_path_factory.mktemp(request.param)
    config = write_tiny_config(work / 'config.py', VARIANTS[request.param] + TINY_TRAIN_DATA_AND_ADAMW, synthetic_infos)
    torch.manual_seed(0)
    checkpoint = str(work / 'weights.pth')
    torch.save({'state_dict': build_model(load_config(config, required=('model',)).model).state_dict()}, checkpoint)
    infos, results, samples = online_run(config, checkpoint)
    assert len({info['scene_name'] for info in infos}) == 1 and len(infos) == 3   # one scene of 3 key frames
    predictor = OccupancyPredictor.from_config(config, checkpoint, device='cpu')
    return types.SimpleNamespace(name=request.param, predictor=predictor, infos=infos, results=results,
                                 samples=samples)


def api_inputs(info, cameras):
    """The predictor's arguments for a sample, from its info alone: camera -> ego of the key frame (LiDAR
    time) = lidar2ego @ sensor2lidar, the ego pose ego2global."""
    lidar2ego = rigid_transform(info['lidar2ego_rotation'], info['lidar2ego_translation'])
    cams = [info['cams'][cam] for cam in cameras]
    return dict(images=[imread_bgr(c['data_path']) for c in cams],
                intrinsics=np.stack([c['cam_intrinsic'] for c in cams]),
                cam2ego=np.stack([lidar2ego @ rigid_transform(c['sensor2lidar_rotation'], c['sensor2lidar_translation'])
                                  for c in cams]),
                ego_pose=rigid_transform(info['ego2global_rotation'], info['ego2global_translation']),
                timestamp=info['timestamp'] / 1e6)


def cells(prediction):
    """The occupied voxels of a `dict(sem_pred, occ_loc)` as a set of (x, y, z, label)."""
    return {(*(int(v) for v in loc), int(label)) for loc, label in zip(prediction['occ_loc'], prediction['sem_pred'])}


def assert_same_voxels(result, reference):
    np.testing.assert_array_equal(result.voxel_indices, reference['occ_loc'])
    np.testing.assert_array_equal(result.voxel_labels, reference['sem_pred'])


def assert_pipeline_projection(result, sample):
    """The API's ego2img against the pipeline's projection of the same views (float64 of its float32 matrices).

    The pipeline rounds lidar2img and ego2lidar (E) to float32 before multiplying them (OPS: the model's float32
    product; OPUS-V2: ComposeEgo2Img's float64 product, rounded once more); each entry of the product is then off
    the exact one by at most eps32 * (|lidar2img| @ |E|), and |lidar2img| = |ego2img @ E^-1| <= |ego2img| @ |E^-1|;
    the API rounds its float64 product once (eps32 / 2 * |entry|).
    """
    meta = sample['img_metas'][0].data
    ego2lidar = np.asarray(meta['ego2lidar'], dtype=np.float32).astype(np.float64)
    if 'ego2img' in meta:
        pipeline = np.asarray(meta['ego2img'], dtype=np.float64)
    else:
        pipeline = np.asarray(meta['lidar2img'], dtype=np.float32).astype(np.float64) @ ego2lidar
    api = result.ego2img.reshape(-1, 4, 4).astype(np.float64)
    bound = EPS32 * (np.abs(api) @ np.abs(rigid_inverse(ego2lidar)) @ np.abs(ego2lidar) + np.abs(api))
    assert (np.abs(api - pipeline) <= bound).all(), np.abs(api - pipeline).max()


def test_calls_in_order_equal_the_online_run(variant):
    """(a), (b): each sample's voxels equal val.py's online run, the scene's samples given in order."""
    predictor = variant.predictor
    predictor.reset()
    T = predictor.num_frames
    for index, (info, reference, sample) in enumerate(zip(variant.infos, variant.results, variant.samples)):
        result = predictor(**api_inputs(info, predictor.camera_names))
        assert_same_voxels(result, reference)
        assert_pipeline_projection(result, sample)
        # the pipeline's frame choice: previous key frames, the scene's first for slots older than the scene
        assert result.frame_index == index
        assert result.history == tuple(max(index - t * predictor.history_stride, 0) for t in range(1, T))
        assert result.semantics.shape == (200, 200, 16) and result.semantics.dtype == np.uint8
        assert (result.semantics != 17).sum() == len(result.voxel_labels)
        np.testing.assert_array_equal(result.semantics[tuple(result.voxel_indices.T)], result.voxel_labels)
        np.testing.assert_allclose(result.voxel_centres, result.voxel_indices * 0.4 + [-39.8, -39.8, -0.8],
                                   atol=1e-12)   # float64 sums of numbers below 40: ~1e-14
    assert predictor.scene_length == 3
    assert sum(len(r['sem_pred']) for r in variant.results) > 0    # voxels were compared


def test_single_frame_mode_and_reset(variant):
    """(c): `ego_pose=None` is the first sample of a scene (the current frame in every history slot); after
    `reset()` a frame with its pose is the first of a new scene as well."""
    predictor = variant.predictor
    predictor.reset()
    first = api_inputs(variant.infos[0], predictor.camera_names)
    result = predictor(**dict(first, ego_pose=None))
    assert_same_voxels(result, variant.results[0])
    assert result.history == (0,) * (predictor.num_frames - 1) and predictor.scene_length == 0
    last = api_inputs(variant.infos[2], predictor.camera_names)
    alone = predictor(**dict(last, ego_pose=None))
    predictor(**api_inputs(variant.infos[1], predictor.camera_names))
    predictor.reset()
    restarted = predictor(**last)
    assert restarted.frame_index == 0 and restarted.history == alone.history
    assert_same_voxels(restarted, alone.prediction())
    # without its history the last sample's prediction differs from the online run's: the history counts
    assert cells(alone.prediction()) != cells(variant.results[2])


def test_points_are_the_decoder_outputs_of_the_step(variant):
    """The points and scores are the last decoder layer's of the step that made the voxels: the head run
    directly on the same images' features and the API's projections gives them exactly (CPU)."""
    predictor = variant.predictor
    predictor.reset()
    model, head = predictor.model, predictor.model.pts_bbox_head
    T = predictor.num_frames
    features = []
    for info, sample in zip(variant.infos[:2], variant.samples):
        result = predictor(**api_inputs(info, predictor.camera_names))
        with torch.no_grad():
            features.insert(0, model.extract_img_feat(model.preprocess(sample['img'][0].data)))   # newest first
            frames = [features[min(t, len(features) - 1)] for t in range(T)]
            feats = [torch.cat([f[level] for f in frames])[None] for level in range(len(frames[0]))]
            h, w = result.image_hw
            views = list(result.ego2img.reshape(-1, 4, 4))
            metas = [dict(lidar2img=views, ego2img=views, ego2lidar=np.eye(4), ego2occ=np.eye(4),
                          img_shape=[(h, w, 3)] * len(views))]
            outs = head(feats, metas)
        points = head.decode_points(outs['all_refine_pts'][-1][0]).reshape(-1, 3).numpy()
        np.testing.assert_array_equal(result.points, points)
        assert result.points.shape == (12 * outs['all_refine_pts'][-1].shape[2], 3)     # Q x P of the last layer
        if variant.name.startswith('opusv2'):
            assert result.point_scores is None and result.point_labels is None   # V2 classifies voxels
        else:
            best, label = outs['all_cls_scores'][-1][0].sigmoid().reshape(-1, 17).max(dim=-1)
            np.testing.assert_array_equal(result.point_scores, best.numpy())
            np.testing.assert_array_equal(result.point_labels, label.numpy())


@pytest.fixture(scope='module')
def rig_predictor(tmp_path_factory):
    """The tiny OPS (2 frames, 64x160 crops, no closing: see VARIANTS) with random weights, from its config alone."""
    config = tmp_path_factory.mktemp('rig') / 'tiny_rig.py'
    config.write_text(RIG_CONFIG.replace('padding=True', 'padding=False'))
    return str(config), OccupancyPredictor.from_config(str(config), None, device='cpu')


def pinhole_rig():
    """Six cameras 1.5 m up looking outwards at yaws 0, -55, 55, 180, 110, -110 degrees (x forward, z up)."""
    cam2ego = []
    for yaw in np.radians([0, -55, 55, 180, 110, -110]):
        forward, left = np.array([np.cos(yaw), np.sin(yaw), 0.0]), np.array([-np.sin(yaw), np.cos(yaw), 0.0])
        rotation = np.stack([-left, [0.0, 0.0, -1.0], forward], axis=1)    # camera x right, y down, z forward
        cam2ego.append(rigid_transform(rotation, [0.0, 0.0, 1.5]))
    intrinsics = np.array([[100.0, 0.0, 80.0], [0.0, 100.0, 45.0], [0.0, 0.0, 1.0]])
    return np.repeat(intrinsics[None], 6, 0), np.stack(cam2ego)


def test_image_size_resize_crop_and_channel_order(rig_predictor):
    """Images of any size: resized and cropped as the test pipeline, the intrinsics with them; RGB input."""
    _, predictor = rig_predictor
    intrinsics, cam2ego = pinhole_rig()
    rng = np.random.RandomState(0)
    small = [rng.randint(0, 256, (90, 160, 3)).astype(np.uint8) for _ in range(6)]
    base = predictor(small, intrinsics, cam2ego)
    # 180x320 with the intrinsics doubled: scale max(64 / 180, 160 / 320) = 0.5, then the bottom 64 rows of the
    # 90x160 resized image (rows 26..90): the same projection as 90x160 at scale 1 with that crop
    large = [img.repeat(2, 0).repeat(2, 1) for img in small]
    doubled = intrinsics * np.array([2.0, 2.0, 1.0])[:, None]
    twice = predictor(large, doubled, cam2ego)
    assert base.image_hw == twice.image_hw == (64, 160)
    np.testing.assert_array_equal(base.ego2img, twice.ego2img)     # 0.5 * 2 is exact in binary
    # by hand: u' = fx / d * x_c + cx, v' = fy / d * y_c + cy - 26 for a camera-frame point (x_c, y_c, d)
    point_cam = np.array([1.0, -0.5, 10.0, 1.0])
    pixel = base.ego2img[0, 0].astype(np.float64) @ (cam2ego[0] @ point_cam)
    np.testing.assert_allclose(pixel[:2] / pixel[2], [100 * 0.1 + 80, 100 * -0.05 + 45 - 26],
                               atol=1e-4)    # float32 matrix: rel. 6e-8 of |row| * |p| ~ 1e3, over d = 10
    # depth row of the float32 matrix: rounding 6e-8 of |row| * |p| (~10) = 6e-7 m, below 1e-5 m
    assert np.isclose(pixel[2], 10.0, atol=1e-5)   # 6e-7 m of float32 rounding (above), 1e-5 m bound
    rgb = OccupancyPredictor(predictor.model, predictor.benchmark, predictor.ida_aug_conf, device='cpu',
                             channel_order='rgb')
    flipped = rgb([img[..., ::-1] for img in small], intrinsics, cam2ego)
    assert_same_voxels(flipped, base.prediction())
    np.testing.assert_array_equal(flipped.points, base.points)


def test_views_of_different_sizes_on_one_canvas(rig_predictor):
    """A config that pads the views (PadViewsToSize, Occ3D-Waymo) takes cameras of different sizes: each sits at the
    bottom of the canvas, rows shifted by the canvas height minus its own, then the canvas is resized and cropped."""
    _, rig = rig_predictor
    predictor = OccupancyPredictor(rig.model, rig.benchmark, rig.ida_aug_conf, pad_views=dict(size=(100, 160),
                                                                                              align='bottom'))
    intrinsics, cam2ego = pinhole_rig()
    heights = [90, 90, 90, 70, 70, 70]
    result = predictor([np.full((h, 160, 3), 100, np.uint8) for h in heights], intrinsics, cam2ego)
    # canvas 100x160 -> scale max(64 / 100, 160 / 160) = 1, crop rows 36..100: v' = v + (100 - h) - 36
    point_cam = np.array([1.0, -0.5, 10.0, 1.0])
    for n, h in enumerate(heights):
        pixel = result.ego2img[0, n].astype(np.float64) @ (cam2ego[n] @ point_cam)
        np.testing.assert_allclose(pixel[:2] / pixel[2], [100 * 0.1 + 80, 100 * -0.05 + 45 + (100 - h) - 36],
                                   atol=1e-4)    # float32 matrix: rel. 6e-8 of |row| * |p| ~ 1e3, over d = 10
    too_tall = [np.zeros((90, 160, 3), np.uint8)] * 5 + [np.zeros((110, 160, 3), np.uint8)]
    with pytest.raises(PredictorInputError, match=r'images\[5\] \(CAM_BACK_RIGHT\) is 110x160 \(HxW\), larger '
                                                  r'than the 100x160 canvas'):
        predictor(too_tall, intrinsics, cam2ego)


def test_settings_of_the_published_configs():
    """What the predictor reads from a config's test pipeline: the crop, the view padding, the history spacing."""
    from engine.config import load_config
    from engine.predictor import inference_settings
    nuscenes = inference_settings(load_config('configs/ops-t_r50_704x256_8f_24e.py', required=('model',)))
    assert nuscenes['ida_aug_conf']['final_dim'] == (256, 704) and nuscenes['pad_views'] is None
    assert nuscenes['history_stride'] == 1            # key frames: test_interval 6 = history_per_sample 6
    waymo = inference_settings(load_config('configs/ops-t_waymo_r50_704x320_8f_24e.py', required=('model',)))
    assert waymo['ida_aug_conf']['final_dim'] == (320, 704)
    assert waymo['pad_views'] == dict(size=(1280, 1920), align='bottom')
    assert waymo['history_stride'] == 5               # every frame a sample, history 0.5 s = 5 frames apart


def test_bad_inputs_are_one_line_errors(rig_predictor, tmp_path):
    """(d): each bad argument is a PredictorInputError of one line naming it, and changes nothing."""
    config, predictor = rig_predictor
    intrinsics, cam2ego = pinhole_rig()
    images = [np.zeros((90, 160, 3), np.uint8)] * 6
    pose = np.eye(4)
    predictor.reset()
    predictor(images, intrinsics, cam2ego, pose, timestamp=1.0)
    sheared = cam2ego.copy()
    sheared[2, 0, 1] += 0.1
    def with_last(img):
        return images[:5] + [img]

    cases = [
        ((images[:5], intrinsics, cam2ego), 'images: got 5 images, the model takes 6 cameras'),
        ((with_last(np.zeros((90, 161, 3), np.uint8)), intrinsics, cam2ego), 'images[5] (CAM_BACK_RIGHT) is 90x161'),
        ((with_last(np.zeros((90, 160, 3), np.float32)), intrinsics, cam2ego), 'images[5] (CAM_BACK_RIGHT): float32'),
        ((with_last(np.zeros((90, 160), np.uint8)), intrinsics, cam2ego), 'expected uint8 [H, W, 3] (BGR)'),
        ((images, intrinsics[:, :2], cam2ego), 'intrinsics: shape [6, 2, 3], expected [6, 3, 3]'),
        ((images, intrinsics, cam2ego[:, :3]), 'cam2ego: shape [6, 3, 4], expected [6, 4, 4]'),
        ((images, intrinsics, sheared), 'cam2ego[2] is not a rigid transform'),
        ((images, intrinsics, cam2ego, np.eye(3)), 'ego_pose: shape [3, 3], expected [4, 4]'),
        ((images, intrinsics, cam2ego, np.diag([1.0, 1.0, -1.0, 1.0])), 'ego_pose is not a rigid transform'),
        ((images, np.full((6, 3, 3), np.nan), cam2ego), 'intrinsics: holds NaN'),
        ((images, intrinsics[:, [0, 2, 1]], cam2ego), 'intrinsics[0]: last row [0.0, 100.0, 45.0], expected [0, 0, 1]'),
        ((images, intrinsics, cam2ego, pose, 'noon'), "timestamp: 'noon' is not a number"),
        ((images, intrinsics, cam2ego, pose, 0.5), "timestamp 0.5 is not after the previous frame's 1.0"),
    ]
    for args, message in cases:
        with pytest.raises(PredictorInputError) as error:
            predictor(*args)
        assert message in str(error.value) and '\n' not in str(error.value), str(error.value)
        assert predictor.scene_length == 1
    with pytest.raises(PredictorInputError, match="channel_order='hsv'"):
        OccupancyPredictor(predictor.model, predictor.benchmark, predictor.ida_aug_conf, channel_order='hsv')
    from models.opus_fusion import OPUSV1Fusion
    with pytest.raises(ValueError, match='OPUSV1Fusion also reads LiDAR points'):   # refused before any use
        OccupancyPredictor(OPUSV1Fusion.__new__(OPUSV1Fusion), predictor.benchmark, predictor.ida_aug_conf)
    from engine.config import ConfigError
    bare = tmp_path / 'no_pipeline.py'
    bare.write_text(TINY_MODEL_CONFIG.format(occ_root='unused'))
    with pytest.raises(ConfigError, match='no RandomTransformImage step in data.test.pipeline'):
        OccupancyPredictor.from_config(str(bare), None, device='cpu')
    sweeps = tmp_path / 'sweeps_between_samples.py'
    sweeps.write_text(RIG_CONFIG.replace('test_mode=True)', 'test_mode=True, test_interval=5)'))
    with pytest.raises(ConfigError, match='test_interval=5 is not a multiple of history_per_sample=6'):
        OccupancyPredictor.from_config(str(sweeps), None, device='cpu')


def test_history_projection_follows_the_ego_motion(rig_predictor):
    """A history slot's projection maps a point of the current ego frame where the earlier frame's own
    projection maps the same world point: ego2img[t] = ego2img_t[0] @ inverse(pose_t) @ pose_0."""
    _, predictor = rig_predictor
    intrinsics, cam2ego = pinhole_rig()
    images = [np.zeros((90, 160, 3), np.uint8)] * 6
    yaw = np.radians(10.0)
    rotation = np.array([[np.cos(yaw), -np.sin(yaw), 0.0], [np.sin(yaw), np.cos(yaw), 0.0], [0.0, 0.0, 1.0]])
    earlier_pose = rigid_transform(rotation, [100.0, 50.0, 0.3])
    pose = earlier_pose @ rigid_transform(rotation, [2.0, 0.3, 0.0])   # moved and turned
    predictor.reset()
    earlier = predictor(images, intrinsics, cam2ego, earlier_pose, 0.0)
    current = predictor(images, intrinsics, cam2ego, pose, 0.5)
    assert current.history == (0,)
    np.testing.assert_array_equal(current.ego2img[0], earlier.ego2img[0])     # same rig, same projection
    points = np.concatenate([np.random.RandomState(1).uniform(-20, 20, (200, 3)), np.ones((200, 1))], axis=1)
    in_earlier_ego = points @ (rigid_inverse(earlier_pose) @ pose).T
    checked = 0
    for n in range(6):
        now = points @ current.ego2img[1, n].astype(np.float64).T
        then = in_earlier_ego @ earlier.ego2img[0, n].astype(np.float64).T
        front = (now[:, 2] > 1.0) & (then[:, 2] > 1.0)
        # float32 matrices: rounding 6e-8 of |row| * |p| (< 1e4) over a depth > 1 m stays below 1e-3 px
        np.testing.assert_allclose(now[front, :2] / now[front, 2:3], then[front, :2] / then[front, 2:3],
                                   atol=1e-3)   # float32 rounding < 1e-3 px (derived above)
        checked += front.sum()
    assert checked > 100


def test_projection_against_the_real_keyframe(rig_predictor, real_keyframe):
    """The projection the API composes, against the real keyframe's own numbers: every box of every camera
    (`cam_instances`: bottom-face centre in the camera frame, its `center_2d` in the 1600x900 image and its
    `depth`, from mmdet3d's converter), moved to the ego frame, lands on `center_2d` after the test crop
    (scale max(64 / 900, 160 / 1600) = 0.1 -> 160x90, rows 26..90)."""
    _, predictor = rig_predictor
    info = real_keyframe.info
    cams = predictor.camera_names
    lidar2ego = np.asarray(info['lidar_points']['lidar2ego'], dtype=np.float64)
    # camera -> ego at the LiDAR time through the global frame (what lidar2cam composes)
    cam2ego = np.stack([lidar2ego @ rigid_inverse(np.asarray(info['images'][c]['lidar2cam'])) for c in cams])
    intrinsics = np.stack([np.asarray(info['images'][c]['cam2img'])[:3, :3] for c in cams])
    predictor.reset()
    result = predictor([imread_bgr(real_keyframe.image_paths[c]) for c in cams], intrinsics, cam2ego)
    checked = 0
    for n, cam in enumerate(cams):
        for box in info['cam_instances'][cam]:
            ego = cam2ego[n] @ np.append(np.asarray(box['bbox_3d'][:3], dtype=np.float64), 1.0)
            pixel = result.ego2img[0, n].astype(np.float64) @ ego
            # float32 matrix: rounding 6e-8 of |row| * |p| (< 1e4) over depths > 1 m: < 1e-3 px, < 1e-4 m;
            # center_2d and depth are float32 too (< 1e-4 px and m at these sizes)
            np.testing.assert_allclose(pixel[:2] / pixel[2], np.asarray(box['center_2d']) * 0.1 - [0.0, 26.0],
                                       atol=1e-3)
            np.testing.assert_allclose(pixel[2], box['depth'], atol=1e-4)
            checked += 1
    assert checked >= 47 + 18     # CAM_FRONT and CAM_FRONT_RIGHT alone have 47 and 18 boxes (the README)


def test_example_script_on_the_real_keyframe(real_keyframe, tmp_path):
    """(e): tools/predict_rig.py on the keyframe of ../shared/data with the tiny OPS and random weights."""
    from PIL import Image

    from tools import predict_rig
    config = tmp_path / 'tiny_rig.py'
    config.write_text(RIG_CONFIG)
    out = tmp_path / 'rig.png'
    stdout = io.StringIO()
    with redirect_stdout(stdout):
        result = predict_rig.main(['--config', str(config), '--data', real_keyframe.dir, '--out', str(out),
                                   '--device', 'cpu'])
    text = stdout.getvalue()
    assert 'random weights (no --weights)' in text and 'images 1600x900 -> 160x64' in text and str(out) in text
    assert result.image_hw == (64, 160) and result.points.shape == (12 * 4, 3)
    picture = np.asarray(Image.open(out).convert('RGB'))
    assert picture.shape[1] == 200 * predict_rig.BEV_SCALE
    # the camera panel holds the real images (varied pixels), the bird's-eye view is mostly white (free)
    bev_top = picture.shape[0] // 4
    assert picture[-300:].std() > 20 and (picture[bev_top:bev_top + 100] == 255).mean() > 0.9
    with pytest.raises(SystemExit, match=r'^predict_rig.py: error: --data: folder not found: .*missing$'):
        predict_rig.main(['--config', str(config), '--data', str(tmp_path / 'missing'), '--device', 'cpu'])
