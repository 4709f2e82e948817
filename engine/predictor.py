"""Occupancy from your own cameras: a Python API around a built OPS-family detector (docs/api.md).

    predictor = OccupancyPredictor.from_config('configs/ops-t_r50_704x256_8f_24e.py', 'ops-t.pth')
    for frame in drive:                                  # frames of one scene, oldest first
        result = predictor(frame.images, frame.intrinsics, frame.cam2ego, frame.ego_pose, frame.time)
        result.semantics                                 # uint8 [X, Y, Z], free = the benchmark's free label
    predictor.reset()                                    # the next call starts a new scene

Inputs per call (N cameras, in the benchmark's camera order, `predictor.camera_names`):
* images: N uint8 `[H, W, 3]` arrays of one size, **BGR** (cv2.imread / mmcv.imread order, what the
  loaders give the model; `channel_order='rgb'` for PIL / imageio arrays), any size: each is resized and
  cropped as the config's test pipeline does (`RandomTransformImage`, test mode: scale
  max(fH / H, fW / W), bottom crop to final_dim (fH, fW), centred horizontally), and the intrinsics
  follow by the same 4x4 image-augmentation matrix;
* intrinsics `[N, 3, 3]` (pixels of the given images), cam2ego `[N, 4, 4]` (camera -> ego frame of this
  frame, column vectors, metres);
* ego_pose `[4, 4]` ego -> world of this frame, or None: single-frame mode;
* timestamp (seconds, optional): must grow within a scene.

Frames (docs/method.md, "Symbols and frames"): the grid, the voxel centres and the points are in the ego
frame of the current call (x forward, y left, z up). The model's projection of view (t, n) is
`ego2img = ida_t @ K_pad[t, n] @ inverse(cam2ego[t, n]) @ inverse(ego_pose[t]) @ ego_pose[0]` (t = 0 the
current frame, t >= 1 earlier calls), composed in float64 and given to the model as its `lidar2img`
with `ego2lidar = I` (OPS) or as `ego2img` with `ego2occ = I` (OPUS-V2).

History (docs/method.md, "Camera history", "Test modes"): the model sees T frames, the current one and
T-1 earlier ones. The predictor keeps the T-1 previous calls of the scene (their poses and projections;
their image features stay in the detector's online feature cache) and fills the T-1 slots as the test
pipeline does for key frames: the previous call, the one before, ..., the scene's first call standing in
for every slot older than the scene; with no earlier call (first frame, or `ego_pose=None`) the current
frame fills every slot.
"""
import contextlib
import itertools
import logging
from dataclasses import dataclass

import numpy as np

from core.geometry import pad_intrinsic, rigid_inverse

__all__ = ['OccupancyPredictor', 'OccupancyResult', 'PredictorInputError', 'ida_aug_conf_of_test_pipeline']

CHANNEL_ORDERS = ('bgr', 'rgb')
# the detector's online cache finds a frame's features by a key (the first camera's filename in the loaders):
# one per call, never reused, also across predictors
_FRAME_KEYS = itertools.count()
# |R^T R - I| and the bottom row of a rigid 4x4 transform: poses written out in float32 are rigid to ~1e-7,
# a matrix that is not a rotation (a scaled or sheared one, a transposed convention mixed in) misses by >> 1e-3
RIGID_TOLERANCE = 1e-4


class PredictorInputError(ValueError):
    """Inputs of `OccupancyPredictor` that do not fit the model; the message names the argument and the fix."""
    user_error = True  # engine/cli.py prints the message without a traceback


@dataclass
class OccupancyResult:
    """The prediction of one call, on the CPU (numpy), in the ego frame of that call.

    Attributes:
        semantics: uint8 `[X, Y, Z]` labels, `free_label` where free.
        voxel_indices: int64 `[M, 3]` (x, y, z) indices of the occupied voxels, x-major order.
        voxel_labels: int64 `[M]` their class ids.
        voxel_centres: float64 `[M, 3]` their centres, metres.
        points: float32 `[P, 3]` the last decoder layer's points (Q queries x their points), metres; None when
            the predictor was built with `points=False`.
        point_scores: float32 `[P]` best class probability of each point (OPS; what the score threshold of
            the test config filters), None where the model classifies voxels, not points (OPUS-V2).
        point_labels: int64 `[P]` the class of that probability, or None as `point_scores`.
        ego2img: float32 `[T, N, 4, 4]` the projection of every view the model used: current ego frame ->
            (u*d, v*d, d, 1) in pixels of the resized and cropped image of frame t (t = 0 the current one).
        image_hw: (h, w) of the resized and cropped images the model saw.
        frame_index: position of this call in its scene (0 = first).
        history: for t = 1..T-1, the scene position of the frame in slot t (`frame_index` itself where the
            current frame stands in for a missing one).
        free_label (int), class_names (tuple): the benchmark's.
    """
    semantics: np.ndarray
    voxel_indices: np.ndarray
    voxel_labels: np.ndarray
    voxel_centres: np.ndarray
    points: np.ndarray
    point_scores: np.ndarray
    point_labels: np.ndarray
    ego2img: np.ndarray
    image_hw: tuple
    frame_index: int
    history: tuple
    free_label: int
    class_names: tuple

    def prediction(self):
        """val.py's per-sample result `dict(sem_pred=int64 [M], occ_loc=int64 [M, 3])` (save it with
        `evaluation.predictions.save_prediction(path, compact_result(...))`, draw it with tools/visualize.py)."""
        return dict(sem_pred=self.voxel_labels, occ_loc=self.voxel_indices)


@dataclass
class _Frame:
    """An earlier call kept for the history: its cache key, position in the scene, projections of its
    cameras (`cam2img` = ida @ K_pad, float64 `[N, 4, 4]`), cameras -> world (float64 `[N, 4, 4]`), time."""
    key: str
    index: int
    cam2img: np.ndarray
    cam2world: np.ndarray
    timestamp: float


def _pipeline_steps(steps):
    """The steps of a pipeline, the wrapped ones (MultiScaleFlipAug3D's `transforms`) included, in order."""
    for step in steps or []:
        if isinstance(step, dict):
            yield step
            yield from _pipeline_steps(step.get('transforms'))


def ida_aug_conf_of_test_pipeline(cfg, path='<config>'):
    """The `ida_aug_conf` of the test pipeline's `RandomTransformImage` step (data.test, data.val or
    test_pipeline), merged with the step's defaults; a ConfigError when the config has none."""
    from engine.config import ConfigError
    from loaders.pipelines.transforms import DEFAULT_IDA_AUG_CONF, merge_aug_conf
    data = cfg.get('data') or {}
    pipelines = [(f'data.{split}.pipeline', (data.get(split) or {}).get('pipeline')) for split in ('test', 'val')]
    pipelines.append(('test_pipeline', cfg.get('test_pipeline')))
    for _, pipeline in pipelines:
        for step in _pipeline_steps(pipeline):
            if step.get('type') == 'RandomTransformImage':
                return merge_aug_conf('RandomTransformImage', 'ida_aug_conf', step.get('ida_aug_conf'),
                                      DEFAULT_IDA_AUG_CONF)
    raise ConfigError(f'{path}: no RandomTransformImage step in {", ".join(name for name, _ in pipelines)}; the '
                      f'predictor resizes and crops the images as that test-pipeline step does')


@contextlib.contextmanager
def _quiet_logger(name, level=logging.WARNING):
    """Logger `name` at `level` within the block (mmcv logs one INFO record per parameter it initialises)."""
    logger = logging.getLogger(name)
    previous = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(previous)


@contextlib.contextmanager
def _head_outputs(head):
    """Within the block, every `head.forward_geometry(...)` output dict is also appended to the yielded list
    (the detector's test step keeps only the occupancy it computes from them; docs/api.md, "Points")."""
    kept = []
    shadowed = head.__dict__.get('forward_geometry')
    compute = head.forward_geometry

    def forward_geometry(*args, **kwargs):
        outs = compute(*args, **kwargs)
        kept.append(outs)
        return outs

    head.forward_geometry = forward_geometry
    try:
        yield kept
    finally:
        if shadowed is None:
            del head.forward_geometry
        else:
            head.forward_geometry = shadowed


def _matrices(value, shape, name):
    """float64 array of `shape`, or a PredictorInputError naming `name`."""
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise PredictorInputError(f'{name}: not a numeric array; expected shape {list(shape)}') from None
    if array.shape != tuple(shape):
        raise PredictorInputError(f'{name}: shape {list(array.shape)}, expected {list(shape)}')
    if not np.isfinite(array).all():
        raise PredictorInputError(f'{name}: holds NaN or infinite values')
    return array


def _check_rigid(transforms, name):
    """PredictorInputError naming the first of `transforms` `[..., 4, 4]` that is not a rigid transform."""
    flat = transforms.reshape(-1, 4, 4)
    rotations = flat[:, :3, :3]
    error = np.abs(rotations.transpose(0, 2, 1) @ rotations - np.eye(3)).max(axis=(1, 2))
    bottom = np.abs(flat[:, 3] - np.array([0.0, 0.0, 0.0, 1.0])).max(axis=1)
    proper = np.linalg.det(rotations) > 0
    bad = np.flatnonzero((error > RIGID_TOLERANCE) | (bottom > RIGID_TOLERANCE) | ~proper)
    if bad.size:
        where = f'{name}[{bad[0]}]' if transforms.ndim == 3 else name
        raise PredictorInputError(f'{where} is not a rigid transform [[R, t], [0, 0, 0, 1]] with R a rotation '
                                  f'(column vectors, p_dst = R p_src + t)')


class OccupancyPredictor:
    """Runs a built OPS / OPUS-V2 detector on images and calibration you give it, keeping a scene's history.

    Args:
        model: an OPS-family detector (engine.build.build_model), with its weights.
        ida_aug_conf (dict): the test pipeline's image augmentation (`ida_aug_conf_of_test_pipeline`): final_dim
            (fH, fW) and bot_pct_lim are used; H and W are taken from the images of each call.
        benchmark: the config's `Benchmark` (core/benchmarks/): camera order, grid, classes.
        device (str): 'auto' (CUDA when available), 'cpu', 'cuda', 'cuda:1', ...
        channel_order (str): 'bgr' (default: cv2 / mmcv order, what the loaders give the model) or 'rgb'.
        points (bool): also return the last decoder layer's points and scores. On CUDA this needs the test
            step eager (`from_config` turns the test CUDA graph off): a graph replay does not run the Python
            that hands them out.

    The predictor runs the detector's online test mode: between the calls of a scene the detector's feature
    cache holds the earlier frames' features, so the detector must not run other samples in between.
    """

    def __init__(self, model, ida_aug_conf, benchmark, device='auto', channel_order='bgr', points=True):
        import torch

        from models.lidar import LidarBranchMixin
        if isinstance(model, LidarBranchMixin):
            raise ValueError(f'{type(model).__name__} also reads LiDAR points; the predictor runs the camera-only '
                             f'models (OPS, OPUS-V2)')
        if channel_order not in CHANNEL_ORDERS:
            raise PredictorInputError(f'channel_order={channel_order!r}; choose one of {CHANNEL_ORDERS}')
        self.device = torch.device(('cuda' if torch.cuda.is_available() else 'cpu') if device == 'auto' else device)
        self.model = model.to(self.device).eval()
        # one sample of a scene at a time, history features from the cache (docs/method.md, "Test modes")
        self.model.online = True
        self.benchmark = benchmark
        self.ida_aug_conf = dict(ida_aug_conf)
        self.channel_order = channel_order
        self.points = bool(points)
        transformer = model.pts_bbox_head.transformer
        self.num_frames, self.num_views = int(transformer.num_frames), int(model.num_views)
        if self.num_frames > model.feature_cache.capacity:
            raise ValueError(f'{type(model).__name__}: {self.num_frames} frames per sample, but its online feature '
                             f'cache holds {model.feature_cache.capacity} frames')
        names = tuple(benchmark.camera_names)
        self.camera_names = names if len(names) == self.num_views else tuple(f'camera {n}' for n in
                                                                                range(self.num_views))
        if self.points and self.device.type == 'cuda' and self._replays_graph():
            raise ValueError('points=True needs the test step run eagerly on CUDA: build the model with '
                             'execution test_cuda_graph=False (from_config does), or pass points=False')
        self._history = []           # earlier frames of the scene, newest first (at most T-1)
        self._scene_length = 0

    @classmethod
    def from_config(cls, config_path, weights, device='auto', fast=False, channel_order='bgr', points=True,
                    trust_checkpoint=False):
        """A predictor of the config's model with the checkpoint `weights` (None: random initial weights).

        `fast` selects the 'fast' execution preset (accel/policy.py) as val.py --fast does; the config's
        `execution` dict applies otherwise.
        """
        import torch

        from accel import policy_from_config
        from engine.build import build_model, set_test_mode
        from engine.config import config_benchmark, load_config
        cfg = load_config(config_path, required=('model',))
        ida_aug_conf = ida_aug_conf_of_test_pipeline(cfg, config_path)
        set_test_mode(cfg, online=True)
        # the test step hands out the points only when it runs as Python (not replayed from a CUDA graph)
        policy = policy_from_config(cfg.get('execution'), fast=fast, test_cuda_graph=False if points else None)
        with torch.random.fork_rng(devices=[]), _quiet_logger('mmcv'):
            torch.manual_seed(0)    # random initial weights (weights=None) are the same at every call
            model = build_model(cfg.model, checkpoint=weights, trust_checkpoint=trust_checkpoint, execution=policy)
        return cls(model, ida_aug_conf, config_benchmark(cfg, config_path), device=device,
                   channel_order=channel_order, points=points)

    def _replays_graph(self):
        from accel.cuda_graph import GraphedFunction
        steps = getattr(self.model, 'graphed_steps', None) or {}
        return isinstance(steps.get('online_step'), GraphedFunction)

    # ------------------------------------------------------------------ scene state
    def reset(self):
        """Start a new scene: no earlier frame is used as history by the next call."""
        self._history = []
        self._scene_length = 0
        self.model.feature_cache.clear()

    @property
    def scene_length(self):
        """Calls made in the current scene."""
        return self._scene_length

    # ------------------------------------------------------------------ inputs
    def _check_images(self, images):
        """N uint8 `[H, W, 3]` arrays of one size -> list of BGR arrays."""
        N = self.num_views
        if isinstance(images, np.ndarray) and images.ndim == 4:
            images = list(images)
        if not isinstance(images, (list, tuple)):
            raise PredictorInputError(f'images: expected a list of {N} [H, W, 3] uint8 arrays (one per camera: '
                                      f'{", ".join(self.camera_names)}), got {type(images).__name__}')
        if len(images) != N:
            raise PredictorInputError(f'images: got {len(images)} images, the model takes {N} cameras '
                                      f'({", ".join(self.camera_names)})')
        out = []
        for n, img in enumerate(images):
            img = np.asarray(img)
            if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3 or min(img.shape[:2]) < 1:
                raise PredictorInputError(f'images[{n}] ({self.camera_names[n]}): {img.dtype} array of shape '
                                          f'{list(img.shape)}; expected uint8 [H, W, 3] ({self.channel_order.upper()})')
            if out and img.shape != out[0].shape:
                raise PredictorInputError(f'images[{n}] ({self.camera_names[n]}) is {img.shape[0]}x{img.shape[1]} '
                                          f'(HxW) but images[0] is {out[0].shape[0]}x{out[0].shape[1]}: all cameras '
                                          f'must have one size (resize them first)')
            out.append(np.ascontiguousarray(img[..., ::-1]) if self.channel_order == 'rgb' else img)
        return out

    def _augmentation(self, image_hw):
        """The test pipeline's step for images of `image_hw`: (RandomTransformImage, its draw, its 4x4 ida)."""
        from loaders.pipelines.transforms import RandomTransformImage
        step = RandomTransformImage(dict(self.ida_aug_conf, H=int(image_hw[0]), W=int(image_hw[1])), training=False)
        draw = step.sample_augmentation()
        resize, _, crop, flip, rotate = draw
        return step, draw, step.ida_matrix(resize, crop, flip, rotate)

    # ------------------------------------------------------------------ one frame
    def __call__(self, images, intrinsics, cam2ego, ego_pose=None, timestamp=None):
        """Occupancy of one frame (`OccupancyResult`); see the module docstring for the inputs."""
        import torch
        N = self.num_views
        images = self._check_images(images)
        intrinsics = _matrices(intrinsics, (N, 3, 3), 'intrinsics')
        bad = np.flatnonzero(np.abs(intrinsics[:, 2] - [0.0, 0.0, 1.0]).max(axis=1) > 0)
        if bad.size:
            raise PredictorInputError(f'intrinsics[{bad[0]}]: last row {intrinsics[bad[0], 2].tolist()}, expected '
                                      f'[0, 0, 1] (a pinhole camera matrix K in pixels)')
        cam2ego = _matrices(cam2ego, (N, 4, 4), 'cam2ego')
        _check_rigid(cam2ego, 'cam2ego')
        if ego_pose is not None:
            ego_pose = _matrices(ego_pose, (4, 4), 'ego_pose')
            _check_rigid(ego_pose, 'ego_pose')
        if timestamp is not None:
            try:
                timestamp = float(timestamp)
            except (TypeError, ValueError):
                raise PredictorInputError(f'timestamp: {timestamp!r} is not a number of seconds') from None
            last = self._history[0].timestamp if self._history and ego_pose is not None else None
            if last is not None and not timestamp > last:
                raise PredictorInputError(f'timestamp {timestamp} is not after the previous frame\'s {last}: give '
                                          f'the frames of a scene oldest first, or call reset() for a new scene')
        if ego_pose is None:
            self.reset()    # a frame without a pose cannot be related to others: a scene of its own

        step, draw, ida = self._augmentation(images[0].shape[:2])
        resize, resize_dims, crop, flip, rotate = draw
        images = [step.img_transform(img, resize_dims, crop, flip, rotate) for img in images]
        cam2img = np.stack([ida @ pad_intrinsic(k) for k in intrinsics])                    # [N, 4, 4]
        # the current frame straight from its calibration; earlier frames through the world frame
        current = np.stack([cam2img[n] @ rigid_inverse(cam2ego[n]) for n in range(N)])
        history = self._history_slots()
        frames = [current] + [np.stack([f.cam2img[n] @ rigid_inverse(f.cam2world[n]) @ ego_pose for n in range(N)])
                              if f is not None else current for f in history]
        ego2img = np.stack(frames).astype(np.float32)                                        # [T, N, 4, 4]

        key = f'predictor-frame-{next(_FRAME_KEYS)}'
        keys = [key] + [f.key if f is not None else key for f in history]
        time = 0.0 if timestamp is None else timestamp
        times = [time] + [f.timestamp if f is not None else time for f in history]
        metas = self._metas(ego2img, keys, times)
        img = torch.from_numpy(np.ascontiguousarray(np.stack(images).transpose(0, 3, 1, 2)))[None].to(self.device)
        with _head_outputs(self.model.pts_bbox_head) as outputs, torch.no_grad():
            occupancy = self.model.simple_test(img, [metas])[0]
        index = self._scene_length
        result = self._result(occupancy, outputs[-1] if self.points and outputs else None, ego2img,
                              images[0].shape[:2], index, tuple(f.index if f is not None else index for f in history))
        if ego_pose is not None:
            cam2world = np.stack([ego_pose @ c for c in cam2ego])
            self._history = ([_Frame(key, index, cam2img, cam2world, time)] + self._history)[:self.num_frames - 1]
            self._scene_length += 1
        return result

    def _history_slots(self):
        """The earlier frame of each of the T-1 history slots, newest first (None: the current frame stands in):
        slot t holds the t-th previous call, or the scene's first call when the scene is shorter."""
        if not self._history:
            return [None] * (self.num_frames - 1)
        return [self._history[min(t, len(self._history) - 1)] for t in range(self.num_frames - 1)]

    def _metas(self, ego2img, keys, times):
        """The sample's img_metas for the detector: every per-view list frame-major (T*N entries)."""
        N = self.num_views
        views = [m for m in ego2img.reshape(-1, 4, 4)]
        identity = np.eye(4, dtype=np.float32)
        return dict(filename=[k for k in keys for _ in range(N)], img_timestamp=[t for t in times for _ in range(N)],
                    # V1 reads lidar2img @ ego2lidar, V2 ego2img @ inverse(ego2occ): the LiDAR frame is the ego frame
                    lidar2img=views, ego2lidar=identity, ego2img=views, ego2occ=identity)

    def _result(self, occupancy, head_outputs, ego2img, image_hw, index, history):
        from core.geometry import dense_from_sparse
        bench = self.benchmark
        labels, indices = occupancy['sem_pred'].astype(np.int64), occupancy['occ_loc'].astype(np.int64)
        centres = (indices + 0.5) * np.asarray(bench.voxel_size) + np.asarray(bench.point_cloud_range[:3])
        points = scores = point_labels = None
        if head_outputs is not None:
            head = self.model.pts_bbox_head
            points = head.decode_points(head_outputs['all_refine_pts'][-1][0]).float().reshape(-1, 3).cpu().numpy()
            logits = head_outputs['all_cls_scores'][-1]
            # OPS classifies the points ([1, Q, P, K] logits); OPUS-V2 the voxels of its CPD module ([U', K])
            if logits is not None and logits.dim() == 4:
                best, label = logits[0].float().sigmoid().reshape(-1, logits.shape[-1]).max(dim=-1)
                scores, point_labels = best.cpu().numpy(), label.cpu().numpy().astype(np.int64)
        return OccupancyResult(
            semantics=dense_from_sparse(labels, indices, bench.grid_shape, bench.free_label),
            voxel_indices=indices, voxel_labels=labels, voxel_centres=centres, points=points, point_scores=scores,
            point_labels=point_labels, ego2img=ego2img, image_hw=tuple(int(v) for v in image_hw), frame_index=index,
            history=history, free_label=bench.free_label, class_names=tuple(bench.class_names))
