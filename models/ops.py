"""The OPS detector (docs/method.md, "Image branch", "Test modes"): image branch, GPU photometric distortion,
online/offline test.

Symbols (docs/method.md, "Symbols and frames"): B batch, T frames, N views per frame, V images given
to the backbone (T*N, or N online), L FPN levels, C channels, (H, W) the augmented image,
(H_l, W_l) FPN level l, (X, Y, Z) the occupancy grid.

Batch format (docs/architecture.md): `img` uint8 `[B, T*N, 3, H, W]` BGR, frame-major (index t*N + n,
t = 0 the key frame); `img_metas` B dicts with T*N `lidar2img`, `filename`, ... In online test mode
only the N key-frame images are given and the history features come from a per-frame cache.
"""
import warnings

import torch
from mmdet.models import DETECTORS
from mmdet.models.builder import build_backbone, build_head, build_neck
from mmdet.models.detectors.base import BaseDetector

from .feature_cache import FrameFeatureCache
from .gpu_image_decode import decode_and_transform
from .occ_postprocess import pack_occupied
from .photometric import GpuPhotoMetricDistortion

__all__ = ['OPS']

# train_cfg / test_cfg keys that name how the model is executed, not what it computes: they live in the
# config's top-level `execution` dict now (accel/policy.py); a config that still sets one is told where
_EXECUTION_KEYS = {'mode': 'preset', 'cuda_graph': 'train_cuda_graph / test_cuda_graph',
                   'amp_dtype': 'train_autocast', 'offline_fp16': 'offline_autocast'}


def _method_cfg(cfg, which):
    """`train_cfg` / `test_cfg` as a dict holding the method's `pts` settings only."""
    cfg = dict(cfg or {})
    moved = sorted(set(cfg) & set(_EXECUTION_KEYS))
    if moved:
        raise ValueError(f'OPS: {which}.{moved[0]} is an execution setting; set execution=dict('
                         f'{_EXECUTION_KEYS[moved[0]].split(" / ")[0]}=...) at the top of the config instead '
                         f'(accel/policy.py, docs/performance.md)')
    unknown = sorted(set(cfg) - {'pts'})
    if unknown:
        raise ValueError(f'OPS: unknown {which} keys {unknown}; it holds the head\'s settings under "pts"')
    return cfg


@DETECTORS.register_module()
class OPS(BaseDetector):
    """Camera-only occupancy as a sparse point set.

    Args:
        img_backbone, img_neck, pts_bbox_head (dict): mmdet configs (ResNet, FPN, OPSHead).
        data_aug (dict): `img_color_aug` (bool, photometric distortion in training), `img_norm_cfg`
            (mean, std, to_rgb; applied on the device), `img_pad_cfg` (`size_divisor`).
        stop_prev_grad (int): > 0 computes the history frames' image features without gradient;
            0 (the published configs) back-propagates through all frames.
        use_grid_mask (bool): must be False (GridMask is disabled in every published config).
        online (bool | None): test mode. True: online (N current images, history features from the
            cache); False: offline (all T*N images); None: from the input, online when only the N
            key-frame images are given (docs/method.md, "Test modes"). The entry points set it from
            the number of processes (engine/build.py, `set_test_mode`).
        cache_size (int): frames the online cache keeps (FIFO); 15 as the original (which pops while it holds
            16), enough for 7 history frames one key frame apart; a history that reaches further back needs more
            (Occ3D-Waymo: 7 frames 5 samples apart, 36).
        train_cfg, test_cfg (dict): the method's settings, `pts` entries handed to the head. How the model
            is executed (autocast dtypes, CUDA graphs, kernels, matrix-product precision) is not model
            config: the engine applies an execution policy after building it (accel/, `accelerate`).

    The device entry points, graph-capturable (host work only before them): `online_step` and
    `offline_step` (a test step: images -> packed occupancy) and `train_decoder` (the training decoder:
    image features -> the head's outputs). A variant with inputs beyond the images (OPUS-Fusion's points)
    hands them through the test steps as `extra` (`step_inputs`, `decode_outputs`).
    """
    TEST_STEPS = frozenset({'online_step', 'offline_step'})   # the test steps' device entry points
    # the device entry points with static shapes, which a CUDA graph can capture (accel/cuda_graph.py)
    GRAPH_CAPTURABLE = TEST_STEPS | {'train_decoder'}
    # meta key with one projection matrix per view of every frame (T*N entries, also online); OPUS-V2: ego2img
    PROJECTION_KEY = 'lidar2img'

    def __init__(self, img_backbone, img_neck, pts_bbox_head, data_aug=None, stop_prev_grad=0,
                 use_grid_mask=False, online=None, cache_size=15, train_cfg=None, test_cfg=None, init_cfg=None):
        super().__init__(init_cfg)
        if use_grid_mask:
            raise ValueError('OPS: use_grid_mask=True is not supported (GridMask is disabled in the published '
                             'configs); set model.use_grid_mask=False')
        self.img_backbone = build_backbone(img_backbone)
        self.img_neck = build_neck(img_neck)
        train_cfg, test_cfg = _method_cfg(train_cfg, 'train_cfg'), _method_cfg(test_cfg, 'test_cfg')
        head = dict(pts_bbox_head)
        head.update(train_cfg=train_cfg['pts'] if train_cfg else None,
                    test_cfg=test_cfg['pts'] if test_cfg else None)
        self.pts_bbox_head = build_head(head)
        self.train_cfg, self.test_cfg = train_cfg, test_cfg

        data_aug = dict(data_aug or {})
        self.color_aug = GpuPhotoMetricDistortion() if data_aug.get('img_color_aug', False) else None
        norm = data_aug.get('img_norm_cfg')
        self.to_rgb = bool(norm.get('to_rgb', False)) if norm else False
        # non-persistent: they are config, not weights, and the official state dicts do not have them
        self.register_buffer('img_mean', torch.tensor(norm['mean'] if norm else [0.0, 0.0, 0.0],
                                                      dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer('img_std', torch.tensor(norm['std'] if norm else [1.0, 1.0, 1.0],
                                                     dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.size_divisor = data_aug.get('img_pad_cfg', {}).get('size_divisor', 1)
        self.stop_prev_grad = stop_prev_grad
        self.online = online
        self.cache_size = int(cache_size)
        self.feature_cache = FrameFeatureCache(self.cache_size)

    # ------------------------------------------------------------------ image branch
    @property
    def num_views(self):
        return self.pts_bbox_head.transformer.num_views

    def train(self, mode=True):
        super().train(mode)
        if mode:
            # cached features belong to the previous weights
            self.feature_cache.clear()
        return self

    def preprocess(self, img):
        """uint8/float `[n, 3, H, W]` BGR 0..255 -> normalised, padded float32 `[n, 3, H', W']`.

        Photometric distortion (training only), BGR->RGB if `to_rgb`, (x - mean) / std, zero padding
        right/bottom to a multiple of `size_divisor`.
        """
        x = img.float()
        if self.training and self.color_aug is not None:
            x = self.color_aug(x)
        if self.to_rgb:
            x = x.flip(1)
        x = (x - self.img_mean) / self.img_std
        H, W = x.shape[-2:]
        pad_h, pad_w = -H % self.size_divisor, -W % self.size_divisor
        if pad_h or pad_w:
            x = torch.nn.functional.pad(x, (0, pad_w, 0, pad_h), value=0.0)
        return x

    def _set_shape_metas(self, img_metas, H, W):
        """img/ori shape = augmented size, pad_shape = padded size, one entry per view of every frame."""
        pad_h, pad_w = H + (-H % self.size_divisor), W + (-W % self.size_divisor)
        for meta in img_metas:
            n = len(meta[self.PROJECTION_KEY])
            meta['ori_shape'] = [(H, W, 3)] * n
            meta['img_shape'] = [(H, W, 3)] * n
            meta['pad_shape'] = [(pad_h, pad_w, 3)] * n

    def extract_img_feat(self, img, amp_dtype=None):
        """Backbone + FPN on normalised `[n, 3, H, W]` -> L levels `[n, C, H_l, W_l]` float32.

        Under CUDA autocast with `amp_dtype` (None: no autocast; never on the CPU). Outputs are in the model's
        floating dtype (that of its buffers): float32, or float64 after `.double()` (the float64 tests).
        """
        use_amp = amp_dtype is not None and img.is_cuda
        with warnings.catch_warnings():
            # mmdet 2.28's ResNet(with_cp=True) calls torch.utils.checkpoint without `use_reentrant`; the
            # reentrant variant it gets is the original's behaviour, the per-block warning is noise
            warnings.filterwarnings('ignore', message='torch.utils.checkpoint: the use_reentrant parameter')
            # no cast cache: the step may be captured in a CUDA graph, where cached casts must not outlive it
            with torch.autocast(img.device.type, dtype=amp_dtype if use_amp else None, enabled=use_amp,
                                cache_enabled=False):
                feats = self.img_neck(self.img_backbone(img))
        return [f.to(self.img_mean.dtype) for f in feats]

    def train_amp_dtype(self):
        """Autocast dtype of the backbone in training: fp16 when mmcv's fp16 optimizer hook enabled it (the
        configs' `fp16 = dict(loss_scale=512.0)`, as the original), else None (fp32)."""
        return torch.float16 if self.fp16_enabled else None

    def extract_feat(self, img, img_metas):
        """Training: `[B, V, 3, H, W]` BGR images -> L levels `[B, V, C, H_l, W_l]` (V = T*N)."""
        if img.dim() != 5 or img.shape[2] != 3:
            raise ValueError(f'OPS: img must be [B, views, 3, H, W] (BGR), got {tuple(img.shape)}')
        B, V = img.shape[:2]
        amp_dtype = self.train_amp_dtype()
        x = self.preprocess(img.flatten(0, 1))
        if self.training and self.stop_prev_grad > 0 and V > self.num_views:
            N = self.num_views
            x = x.view(B, V, *x.shape[1:])
            cur = self.extract_img_feat(x[:, :N].flatten(0, 1), amp_dtype)
            with torch.no_grad():
                prev = self.extract_img_feat(x[:, N:].flatten(0, 1), amp_dtype)
            feats = [torch.cat([c.view(B, N, *c.shape[1:]), p.view(B, V - N, *p.shape[1:])], 1)
                     for c, p in zip(cur, prev)]
        else:
            feats = [f.view(B, V, *f.shape[1:]) for f in self.extract_img_feat(x, amp_dtype)]
        self._set_shape_metas(img_metas, *img.shape[-2:])
        return feats

    # ------------------------------------------------------------------ test steps (static shapes)
    def test_amp_dtype(self, online):
        """Autocast dtype of the backbone at test time: None (float32). An execution policy may choose
        another (accel/policy.py: the original's multi-GPU test runs the backbone offline under fp16)."""
        return None

    def _image_feats(self, img, amp_dtype):
        """uint8 `[n, 3, H, W]` -> L levels `[n, C, H_l, W_l]` float32."""
        return self.extract_img_feat(self.preprocess(img), amp_dtype)

    def online_step(self, img, occ2img, slot, frame_slots, *extra, image_h, image_w):
        """One online sample on device tensors: `[1, N, 3, H, W]` uint8 images of the key frame,
        `[1, T*N, 4, 4]` occ2img, int64 key-frame slot `[1]` and frame slots `[T]` -> packed occupancy
        (`decode`)."""
        transformer = self.pts_bbox_head.transformer
        feats = self._image_feats(img[0], self.test_amp_dtype(online=True))     # L x [N, C, H_l, W_l]
        self.feature_cache.write(slot, [transformer.frame_sampling_layout(f) for f in feats])
        frames = self.feature_cache.read(frame_slots)              # L x [T, G, N, H_l, W_l, C/G]
        return self.decode([f.flatten(0, 1) for f in frames], occ2img, *extra, image_h=image_h, image_w=image_w)

    def decode(self, feats, occ2img, *extra, image_h, image_w):
        """Decoder + post-processing of the test step (float32) on features in the sampling layout
        (`transformer.sampling_layout`) -> the occupied cells of each sample, packed (`pack_occupied`:
        int64 `[B]` counts, int32 `[B, 2V]`)."""
        head = self.pts_bbox_head
        with torch.autocast(occ2img.device.type, enabled=False):
            outs = self.decode_outputs(feats, occ2img, *extra, image_h=image_h, image_w=image_w)
            return pack_occupied(head.get_occ_grids(outs), head.empty_label)

    def decode_outputs(self, feats, occ2img, *extra, image_h, image_w):
        """The head's outputs of a test step (`OPSHead.forward_geometry`); `extra`: the variant's `step_inputs`."""
        return self.pts_bbox_head.forward_geometry(feats, occ2img, image_h, image_w)

    def step_inputs(self, img_metas, device, *extra):
        """The test step's inputs beyond the images and occ2img, from the metas and the batch's other inputs
        (host work): none for the camera-only models."""
        return ()

    def offline_step(self, img, occ2img, *extra, image_h, image_w):
        """B offline samples: uint8 `[B, T*N, 3, H, W]` -> packed occupancy (`decode`)."""
        B, V = img.shape[:2]
        feats = self._image_feats(img.flatten(0, 1), self.test_amp_dtype(online=False))
        feats = [f.view(B, V, *f.shape[1:]) for f in feats]
        return self.decode(self.pts_bbox_head.transformer.sampling_layout(feats), occ2img, *extra, image_h=image_h,
                           image_w=image_w)

    def online_occupancy(self, img, img_metas, *extra):
        """Online mode (batch 1): the N key-frame images, history features from the cache.

        The cache is keyed by the first camera's filename of each frame; a history frame is found
        there when the samples arrive in dataset order in one process (the previous key frames were
        the key frame of earlier samples). Returns the packed occupancy (`decode`) on the device.
        """
        if img.shape[0] != 1 or len(img_metas) != 1:
            raise ValueError(f'OPS online test mode supports batch size 1, got {img.shape[0]}')
        N = self.num_views
        filenames = img_metas[0]['filename']
        if len(filenames) % N:
            raise ValueError(f'OPS online mode: {len(filenames)} filenames is not a multiple of {N} views')
        keys = [filenames[t * N] for t in range(len(filenames) // N)]
        img = img[:, :N]
        H, W = img.shape[-2:]
        if self.feature_cache.rings is None or self.feature_cache.rings[0].device != img.device:
            with torch.no_grad():
                probe = self._image_feats(img[0], None)
            frame_layout = self.pts_bbox_head.transformer.frame_sampling_layout
            self.feature_cache.allocate([frame_layout(f).shape for f in probe], torch.float32, img.device)
        try:
            slot, frame_slots = self.feature_cache.assign(keys)
        except KeyError as err:
            raise RuntimeError(
                f'OPS online mode: features of history frame(s) {err.args[0][:3]} are not in the cache. Online '
                f'mode needs the samples of a scene in dataset order in one process; run offline instead (all '
                f'T*N images loaded, model.online=False / dataset online=False).') from None
        self._set_shape_metas(img_metas, H, W)
        occ2img, _ = self.pts_bbox_head.transformer.image_geometry(img_metas, img.device)
        slots = torch.tensor([slot] + frame_slots, dtype=torch.long).to(img.device)
        return self.online_step(img, occ2img, slots[:1], slots[1:], *self.step_inputs(img_metas, img.device, *extra),
                                image_h=int(H), image_w=int(W))

    def offline_occupancy(self, img, img_metas, *extra):
        """Offline mode: all T*N images of B samples -> the packed occupancy (`decode`) on the device."""
        self._set_shape_metas(img_metas, *img.shape[-2:])
        occ2img, _ = self.pts_bbox_head.transformer.image_geometry(img_metas, img.device)
        return self.offline_step(img, occ2img, *self.step_inputs(img_metas, img.device, *extra),
                                 image_h=int(img.shape[-2]), image_w=int(img.shape[-1]))

    def use_online(self, img, img_metas):
        """The test mode for this input (see the `online` argument)."""
        n_img, n_meta = img.shape[1], len(img_metas[0][self.PROJECTION_KEY])
        online = self.online
        if online is None:
            online = n_img < n_meta
        if not online and n_img != n_meta:
            raise ValueError(f'OPS offline test mode needs all {n_meta} images (T*N), got {n_img}: load the '
                             f'history images (dataset online=False) or use online mode (model.online=True)')
        if online and n_img not in (self.num_views, n_meta):
            raise ValueError(f'OPS online test mode needs the {self.num_views} key-frame images, got {n_img}')
        return online

    # ------------------------------------------------------------------ train / test
    def forward(self, img=None, img_metas=None, return_loss=True, **kwargs):
        """Training: `forward(img, img_metas, voxel_semantics=..., mask_camera=...)` -> dict of losses.
        Test: `forward(img=[img], img_metas=[img_metas], return_loss=False, rescale=True)` -> list of
        `dict(sem_pred=int64 [M], occ_loc=int64 [M, 3])`. (No fp16 decorator: only backbone+FPN use fp16.)"""
        if return_loss:
            return self.forward_train(img, img_metas, **kwargs)
        return self.forward_test(img, img_metas, **kwargs)

    def train_step(self, data, optimizer):
        """mmcv's training step: losses -> (total, log values read on the host, mmdet's `_parse_losses`)."""
        loss, log_vars = self._parse_losses(self(**data))
        return dict(loss=loss, log_vars=log_vars, num_samples=len(data['img_metas']))

    def forward_train(self, img, img_metas, voxel_semantics=None, mask_camera=None, img_jpeg=None, **kwargs):
        """img uint8 `[B, T*N, 3, H, W]`; voxel_semantics uint8 and mask_camera bool `[B, X, Y, Z]`.

        With the GPU-decode pipeline (loaders/pipelines/gpu_decode.py) `img` is None and `img_jpeg`
        carries the JPEG bytes and each image's resize/crop/flip, decoded here on the model's device.
        """
        if voxel_semantics is None or mask_camera is None:
            raise ValueError('OPS.forward_train needs voxel_semantics and mask_camera (collect them in the '
                             'train pipeline, as configs/_base_/ops_r50_704x256_8f.py does)')
        voxel_semantics, mask_camera, gts = self.training_ground_truth(voxel_semantics, mask_camera)
        if img is None and img_jpeg is not None:
            img = decode_and_transform(img_jpeg, device=self.img_mean.device)
        feats = self.extract_feat(img, img_metas)
        head = self.pts_bbox_head
        occ2img, (image_h, image_w) = head.transformer.image_geometry(img_metas, img.device)
        with torch.autocast(img.device.type, enabled=False):
            outs = self.train_decoder(*feats, occ2img, image_h=int(image_h), image_w=int(image_w))
            return head.loss(voxel_semantics, mask_camera, head.after_decoder(outs), gts=gts)

    def training_ground_truth(self, voxel_semantics, mask_camera):
        """voxel_semantics and mask_camera `[B, X, Y, Z]` on the model's device (mask_camera None: every voxel
        visible), and the head's ground-truth points (`OPSHead.gt_points`). Called before a training step queues
        any kernel: the points' host reads would otherwise wait for the whole forward pass, and the GPU would then
        idle while the loss's kernels are launched."""
        device = self.img_mean.device
        voxel_semantics = torch.as_tensor(voxel_semantics, device=device)
        mask_camera = torch.ones_like(voxel_semantics, dtype=torch.bool) if mask_camera is None else \
            torch.as_tensor(mask_camera, device=device)
        return voxel_semantics, mask_camera, self.pts_bbox_head.gt_points(voxel_semantics, mask_camera, device)

    def train_decoder(self, *tensors, image_h, image_w):
        """The training decoder on device tensors: the L FPN levels `[B, T*N, C, H_l, W_l]` and occ2img
        `[B, T*N, 4, 4]` (float32) -> the decoder's outputs (`OPSHead.forward_decoder`; what the head computes after
        them, `after_decoder`, runs outside this entry point)."""
        *feats, occ2img = tensors
        head = self.pts_bbox_head
        occ2img = occ2img.to(feats[0].dtype)    # float64 when the model is (the float64 tests)
        return head.forward_decoder(head.transformer.sampling_layout(feats), occ2img, image_h, image_w)

    def forward_test(self, img, img_metas, rescale=True, img_jpeg=None, **kwargs):
        """Test samples come wrapped in one-element lists (a single test-time augmentation)."""
        if img is None and img_jpeg is not None:
            img = [decode_and_transform(img_jpeg[0], device=self.img_mean.device)]
        if isinstance(img, (list, tuple)):
            if len(img) != 1 or not isinstance(img_metas, (list, tuple)) or len(img_metas) != 1:
                raise ValueError(f'OPS test: expected one-element lists img=[tensor], img_metas=[list of dicts] '
                                 f'(one augmentation); got {len(img)} images')
            img, img_metas = img[0], img_metas[0]
        return self.simple_test(img, img_metas, rescale=rescale)

    def simple_test(self, img, img_metas, *extra, rescale=False):
        """`[B, V, 3, H, W]` images -> list of B `dict(sem_pred, occ_loc)` (numpy, CPU).

        The whole step runs on the device with static shapes; its result, the occupied cells of each
        sample, is copied to the host once (the counts, then the occupied prefix of the codes).
        """
        if img.dim() != 5 or img.shape[2] != 3:
            raise ValueError(f'OPS: img must be [B, views, 3, H, W] (BGR), got {tuple(img.shape)}')
        with torch.no_grad():
            if self.use_online(img, img_metas):
                counts, codes = self.online_occupancy(img, img_metas, *extra)
            else:
                counts, codes = self.offline_occupancy(img, img_metas, *extra)
        return self.pts_bbox_head.unpack_occ(counts, codes)

    def aug_test(self, imgs, img_metas, **kwargs):
        raise NotImplementedError('OPS has no test-time augmentation: pass one-element lists to forward_test')
