"""Occupancy from your own cameras: a Python API around a built OPS-family detector (docs/api.md).

    predictor = OccupancyPredictor.from_config('configs/ops-t_r50_704x256_8f_24e.py', 'ops-t.pth')
    for frame in drive:                                  # frames of one scene, oldest first
        result = predictor(frame.images, frame.intrinsics, frame.cam2ego, frame.ego_pose, frame.time)
        result.semantics                                 # uint8 [X, Y, Z], free = the benchmark's free label
    predictor.reset()                                    # the next call starts a new scene

Inputs per call (N cameras, in the benchmark's camera order, `predictor.camera_names`):
* images: N uint8 `[H, W, 3]` arrays, **BGR** (cv2.imread / mmcv.imread order, what the loaders give the
  model; `channel_order='rgb'` for PIL / imageio arrays), of one size unless the config pads the views onto
  one canvas (`PadViewsToSize`, Occ3D-Waymo), any size: they are padded, resized and cropped as the config's
  test pipeline does (`RandomTransformImage` in test mode: scale max(fH / H, fW / W), bottom crop to
  final_dim (fH, fW), centred horizontally), and the intrinsics follow by the same 4x4 matrices;
* intrinsics `[N, 3, 3]` (pixels of the given images), cam2ego `[N, 4, 4]` (camera -> ego frame of this
  frame, column vectors, metres);
* ego_pose `[4, 4]` ego -> world of this frame, or None: single-frame mode;
* timestamp (seconds, optional): must grow within a scene.

Frames (docs/method.md, "Symbols and frames"): the grid, the voxel centres and the points are in the ego
frame of the current call (x forward, y left, z up). The model's projection of view (t, n) is
`ego2img = A_t[n] @ K_pad[t, n] @ inverse(cam2ego[t, n]) @ inverse(ego_pose[t]) @ ego_pose[0]` (t = 0 the
current frame, t >= 1 earlier calls; A the padding shift and resize-and-crop matrix of the image), composed in
float64 and given to the model as its `lidar2img` with `ego2lidar = I` (OPS) or as `ego2img` with
`ego2occ = I` (OPUS-V2).

History (docs/method.md, "Camera history", "Test modes"): the model sees T frames, the current one and
T-1 earlier ones, which the config's test pipeline takes `history_stride` samples apart (its sweep loader's
test_interval / history_per_sample: 1 on Occ3D-nuScenes, whose samples are the 2 Hz key frames). The
predictor keeps the earlier calls of the scene the history reaches (their poses and projections; their image
features stay in the detector's online feature cache) and fills the slots as the pipeline does: slot t holds
the call t * history_stride back, the scene's first call standing in where the scene is shorter; with no
earlier call (first frame, or `ego_pose=None`) the current frame fills every slot.
"""
import contextlib
import itertools
import logging
from dataclasses import dataclass

import numpy as np

from core.geometry import pad_intrinsic, rigid_inverse

__all__ = ['OccupancyPredictor', 'OccupancyResult', 'PredictorInputError', 'inference_settings']

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
        """val.py's per-sample result `dict(sem_pred=int64 [M], occ_loc=int64 [M, 3])`: saved as val.py saves
        it with `evaluation.predictions.save_prediction(path, result.prediction())`, drawn by tools/visualize.py."""
        return dict(sem_pred=self.voxel_labels, occ_loc=self.voxel_indices)


@dataclass
class _Frame:
    """An earlier call kept for the history: its cache key, position in the scene, projections of its
    cameras to its model images (`cam2img`, float64 `[N, 4, 4]`), cameras -> world (float64 `[N, 4, 4]`), time."""
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


def inference_settings(cfg, path='<config>'):
    """What the predictor takes from the config's test pipeline (data.test, else data.val, else test_pipeline).

    Returns:
        dict: `ida_aug_conf` (the `RandomTransformImage` step's, with its defaults), `pad_views` (the
        `PadViewsToSize` step's `dict(size, align)`, or None without one), `history_stride` (earlier samples
        between history frames: the sweep loader's `test_interval / history_per_sample`; 1 without a loader).
    Raises:
        ConfigError: no such pipeline with a `RandomTransformImage` step, or history frames that are not whole
            earlier samples (online mode needs them cached).
    """
    from mmdet.datasets import PIPELINES

    from engine.build import register_modules
    from engine.config import ConfigError
    from loaders.pipelines.transforms import DEFAULT_IDA_AUG_CONF, merge_aug_conf
    register_modules()
    data = cfg.get('data') or {}
    pipelines = [(f'data.{split}.pipeline', (data.get(split) or {}).get('pipeline')) for split in ('test', 'val')]
    pipelines.append(('test_pipeline', cfg.get('test_pipeline')))
    for name, pipeline in pipelines:
        steps = list(_pipeline_steps(pipeline))
        transform = [step for step in steps if step.get('type') == 'RandomTransformImage']
        if not transform:
            continue
        settings = dict(ida_aug_conf=merge_aug_conf('RandomTransformImage', 'ida_aug_conf',
                                                    transform[0].get('ida_aug_conf'), DEFAULT_IDA_AUG_CONF),
                        pad_views=None, history_stride=1)
        for step in steps:
            kind = PIPELINES.get(step['type']) if isinstance(step.get('type'), str) else step.get('type')
            args = {k: v for k, v in step.items() if k != 'type'}
            if step.get('type') == 'PadViewsToSize':
                settings['pad_views'] = dict(size=tuple(args['size']), align=args.get('align', 'top'))
            elif getattr(kind, 'loads_history_frames', False):
                loader = kind(**args)     # its defaults too (constructing it reads no file)
                if loader.test_interval % loader.history_per_sample:
                    raise ConfigError(f'{path}: {name}: {step["type"]}.test_interval={loader.test_interval} is not '
                                      f'a multiple of history_per_sample={loader.history_per_sample}: history frames '
                                      f'between samples cannot come from earlier calls of the predictor')
                settings['history_stride'] = loader.test_interval // loader.history_per_sample
        return settings
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
        benchmark: the config's `Benchmark` (core/benchmarks/): camera order, grid, classes.
        ida_aug_conf (dict): the test pipeline's image augmentation (`inference_settings`): final_dim
            (fH, fW) and bot_pct_lim are used; H and W are those of each call's images (after `pad_views`).
        pad_views (dict | None): `dict(size, align)` of the test pipeline's `PadViewsToSize` step (cameras of
            different sizes on one canvas, Occ3D-Waymo); None: the cameras must have one size.
        history_stride (int): earlier calls between history frames (the sweep loader's test_interval /
            history_per_sample: 1 on Occ3D-nuScenes, whose samples are the key frames; 5 on Occ3D-Waymo).
        device (str): 'auto' (CUDA when available), 'cpu', 'cuda', 'cuda:1', ...
        channel_order (str): 'bgr' (default: cv2 / mmcv order, what the loaders give the model) or 'rgb'.
        points (bool): also return the last decoder layer's points and scores. On CUDA this needs the test
            step eager (`from_config` turns the test CUDA graph off): a graph replay does not run the Python
            that hands them out.

    The predictor runs the detector's online test mode: between the calls of a scene the detector's feature
    cache holds the earlier frames' features, so the detector must not run other samples in between.
    """

    def __init__(self, model, benchmark, ida_aug_conf, pad_views=None, history_stride=1, device='auto',
                 channel_order='bgr', points=True):
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
        self.pad_views = None if pad_views is None else dict(pad_views)
        self.history_stride = int(history_stride)
        self.channel_order = channel_order
        self.points = bool(points)
        transformer = model.pts_bbox_head.transformer
        self.num_frames, self.num_views = int(transformer.num_frames), int(model.num_views)
        # the earlier calls the history reaches back to, and the current one, stay in the detector's feature cache
        self.history_length = (self.num_frames - 1) * self.history_stride
        if self.history_length + 1 > model.feature_cache.capacity:
            raise ValueError(f'{type(model).__name__}: the history reaches {self.history_length} frames back, but its '
                             f'online feature cache holds {model.feature_cache.capacity} frames (model.cache_size)')
        names = tuple(benchmark.camera_names)
        self.camera_names = names if len(names) == self.num_views else tuple(f'camera {n}' for n in
                                                                                range(self.num_views))
        if self.points and self.device.type == 'cuda' and self._replays_graph():
            raise ValueError('points=True needs the test step run eagerly on CUDA: build the model with '
                             'execution test_cuda_graph=False (from_config does), or pass points=False')
        self._history = []           # earlier frames of the scene, newest first (at most history_length)
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
        settings = inference_settings(cfg, config_path)
        set_test_mode(cfg, online=True)
        # the test step hands out the points only when it runs as Python (not replayed from a CUDA graph)
        policy = policy_from_config(cfg.get('execution'), fast=fast, test_cuda_graph=False if points else None)
        with torch.random.fork_rng(devices=[]), _quiet_logger('mmcv'):
            torch.manual_seed(0)    # random initial weights (weights=None) are the same at every call
            model = build_model(cfg.model, checkpoint=weights, trust_checkpoint=trust_checkpoint, execution=policy)
        return cls(model, config_benchmark(cfg, config_path), **settings, device=device, channel_order=channel_order,
                   points=points)

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
            if out and img.shape != out[0].shape and self.pad_views is None:
                raise PredictorInputError(f'images[{n}] ({self.camera_names[n]}) is {img.shape[0]}x{img.shape[1]} '
                                          f'(HxW) but images[0] is {out[0].shape[0]}x{out[0].shape[1]}: all cameras '
                                          f'must have one size (resize them first)')
            out.append(np.ascontiguousarray(img[..., ::-1]) if self.channel_order == 'rgb' else img)
        return out

    def _model_images(self, images, intrinsics):
        """The images as the test pipeline hands them to the model (put on one canvas where the config pads the
        views, then resized and cropped: its `PadViewsToSize` and `RandomTransformImage` steps, with H and W of
        these images) and each camera's projection camera -> pixels of its model image, float64 `[N, 4, 4]`."""
        from loaders.pipelines.pad_views import PadViewsToSize
        from loaders.pipelines.transforms import RandomTransformImage
        shifts = np.repeat(np.eye(4)[None], self.num_views, axis=0)
        if self.pad_views is not None:
            height, width = self.pad_views['size']
            for n, img in enumerate(images):
                if img.shape[0] > height or img.shape[1] > width:
                    raise PredictorInputError(f'images[{n}] ({self.camera_names[n]}) is {img.shape[0]}x{img.shape[1]} '
                                              f'(HxW), larger than the {height}x{width} canvas the config puts the '
                                              f'views on (PadViewsToSize): resize it')
            names = list(self.camera_names)
            padded = PadViewsToSize(**self.pad_views)(dict(img=images, img_filename=names, filename=names,
                                                           lidar2img=list(shifts)))
            # the step's row shifts are whole pixels: exact in its float32 matrices
            images, shifts = padded['img'], np.asarray(padded['lidar2img'], dtype=np.float64)
        step = RandomTransformImage(dict(self.ida_aug_conf, H=images[0].shape[0], W=images[0].shape[1]),
                                    training=False)
        resize, resize_dims, crop, flip, rotate = step.sample_augmentation()
        ida = step.ida_matrix(resize, crop, flip, rotate)
        images = [step.img_transform(img, resize_dims, crop, flip, rotate) for img in images]
        return images, np.stack([ida @ shift @ pad_intrinsic(k) for shift, k in zip(shifts, intrinsics)])

    def _checked(self, images, intrinsics, cam2ego, ego_pose, timestamp):
        """The arguments of a call, checked (PredictorInputError naming the first bad one) and as arrays."""
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
        return images, intrinsics, cam2ego, ego_pose, timestamp

    # ------------------------------------------------------------------ one frame
    def __call__(self, images, intrinsics, cam2ego, ego_pose=None, timestamp=None):
        """Occupancy of one frame (`OccupancyResult`); see the module docstring for the inputs."""
        import torch
        images, intrinsics, cam2ego, ego_pose, timestamp = self._checked(images, intrinsics, cam2ego, ego_pose,
                                                                         timestamp)
        if ego_pose is None:
            self.reset()    # a frame without a pose cannot be related to others: a scene of its own
        images, cam2img = self._model_images(images, intrinsics)
        history = self._history_slots()
        # the current frame straight from its calibration, earlier frames through the world frame
        current = np.stack([p @ rigid_inverse(c) for p, c in zip(cam2img, cam2ego)])
        ego2img = np.stack([current] + [current if f is None else np.stack(
            [p @ rigid_inverse(c) @ ego_pose for p, c in zip(f.cam2img, f.cam2world)]) for f in history])
        ego2img = ego2img.astype(np.float32)                                                 # [T, N, 4, 4]

        key = f'predictor-frame-{next(_FRAME_KEYS)}'
        time = 0.0 if timestamp is None else timestamp
        metas = self._metas(ego2img, [key] + [key if f is None else f.key for f in history],
                            [time] + [time if f is None else f.timestamp for f in history])
        img = torch.from_numpy(np.ascontiguousarray(np.stack(images).transpose(0, 3, 1, 2)))[None].to(self.device)
        with _head_outputs(self.model.pts_bbox_head) as outputs, torch.no_grad():
            occupancy = self.model.simple_test(img, [metas])[0]
        index = self._scene_length
        result = self._result(occupancy, outputs[-1] if self.points and outputs else None, ego2img,
                              images[0].shape[:2], index, tuple(index if f is None else f.index for f in history))
        if ego_pose is not None:
            cam2world = np.stack([ego_pose @ c for c in cam2ego])
            self._history = ([_Frame(key, index, cam2img, cam2world, time)] + self._history)[:self.history_length]
            self._scene_length += 1
        return result

    def _history_slots(self):
        """The earlier frame of each of the T-1 history slots, newest first (None: the current frame stands in):
        slot t holds the call t * history_stride back, or the scene's first call when the scene is shorter (the
        test pipeline's frame choice, docs/method.md "Camera history")."""
        if not self._history:
            return [None] * (self.num_frames - 1)
        return [self._history[min(t * self.history_stride, len(self._history)) - 1] for t in range(1, self.num_frames)]

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
