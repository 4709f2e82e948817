"""The data side of the optional GPU image decode (docs/performance.md, "Data loading").

Default off. With it, the data loader does no pixel work: it reads the JPEG files as bytes, draws
the image augmentation and updates every `lidar2img` exactly as the CPU pipeline does (same steps,
same random draws, same matrices), and hands the bytes plus the drawn resize/crop/flip/rotate to
the model, which decodes them on the device with nvJPEG and applies the same pixel operations
there (`models/gpu_image_decode.py`, `decode_and_transform`). Use it when a machine has too few
CPU cores to decode 48 full-size JPEGs per sample at the training step rate.

Steps (replace their CPU counterparts one for one; `gpu_decode_pipeline` does it on a config list):

| CPU step | GPU-decode step |
|---|---|
| `LoadMultiViewImageFromFiles` | `LoadMultiViewJpegFromFiles` |
| `LoadMultiViewImageFromMultiSweeps` | `LoadMultiViewJpegFromMultiSweeps` |
| `RandomTransformImage` | `DeferredRandomTransformImage` |
| `DefaultFormatBundle3D` | `JpegFormatBundle3D` |
| `Collect3D(keys=['img', ...])` | `Collect3D(keys=['img_jpeg', ...])` |

The batch then carries `img_jpeg` (a cpu-only DataContainer, so it stays on the host; after
`engine.parallel.unpack_batch` a list of B dicts, see `JpegFormatBundle3D`) instead of `img`.
"""
import copy

import numpy as np
import torch
from mmcv.parallel import DataContainer as DC
from mmdet.datasets.builder import PIPELINES

from .formatting import DefaultFormatBundle3D
from .image_io import jpeg_size, read_jpeg_bytes
from .loading import LoadMultiViewImageFromFiles, LoadMultiViewImageFromMultiSweeps
from .transforms import RandomTransformImage

__all__ = ['LoadMultiViewJpegFromFiles', 'LoadMultiViewJpegFromMultiSweeps', 'DeferredRandomTransformImage',
           'JpegFormatBundle3D', 'gpu_decode_pipeline', 'GPU_DECODE_STEPS', 'CPU_PIXEL_STEPS', 'cpu_pixel_step',
           'GpuDecodeUnsupported']


@PIPELINES.register_module()
class LoadMultiViewJpegFromFiles(LoadMultiViewImageFromFiles):
    """`LoadMultiViewImageFromFiles` that does not decode: `img` = N uint8 [nbytes] arrays (the JPEG files).

    `img_shape` / `ori_shape` / `pad_shape` are the (H, W, 3) read from the JPEG headers, as the
    decoded images would have. `to_float32` must stay False; `backend` is unused (the device decodes).
    """

    def __init__(self, to_float32=False, color_type='color', backend='auto'):
        if to_float32:
            raise ValueError('LoadMultiViewJpegFromFiles: to_float32=True is not possible, the images are decoded '
                             'on the device (uint8); use to_float32=False')
        super().__init__(to_float32=False, color_type=color_type, backend=backend)

    def read_image(self, path):
        return read_jpeg_bytes(path)

    def __call__(self, results):
        results = super().__call__(results)
        shapes = [jpeg_size(data) + (3,) for data in results['img']]
        results['img_shape'] = list(shapes)
        results['ori_shape'] = list(shapes)
        results['pad_shape'] = list(shapes)
        return results


@PIPELINES.register_module()
class LoadMultiViewJpegFromMultiSweeps(LoadMultiViewImageFromMultiSweeps):
    """`LoadMultiViewImageFromMultiSweeps` (same frame choice, same `lidar2img`) appending JPEG bytes."""

    def read_image(self, path):
        return read_jpeg_bytes(path)


@PIPELINES.register_module()
class DeferredRandomTransformImage(RandomTransformImage):
    """`RandomTransformImage` without the pixel work: the same random draw (same numpy RNG calls),
    the same `lidar2img`, `ida_aug` and shapes; the images stay JPEG bytes and the draw is stored in
    `img_aug = dict(resize_dims=(W', H'), crop=(x0, y0, x1, y1), flip, rotate)` for the device.
    """

    def sample_augmentation(self):
        draw = super().sample_augmentation()
        self._last_draw = draw
        return draw

    def __call__(self, results):
        imgs = results['img']
        if imgs:
            if imgs[0].ndim != 1 or imgs[0].dtype != np.uint8:
                raise TypeError('DeferredRandomTransformImage works on JPEG bytes: load the images with '
                                'LoadMultiViewJpegFromFiles / LoadMultiViewJpegFromMultiSweeps (GPU decode path), '
                                'or use RandomTransformImage for decoded images')
            expected = (self.ida_aug_conf['H'], self.ida_aug_conf['W'])
            shape = jpeg_size(imgs[0])
            if tuple(shape) != expected:
                raise ValueError(f'DeferredRandomTransformImage: images are {shape[0]}x{shape[1]} (HxW) but '
                                 f'ida_aug_conf says H={expected[0]}, W={expected[1]}; set H and W of ida_aug_conf '
                                 f'to the image size')
        results['img'] = []  # the parent then does the draw and the geometry only
        try:
            results = super().__call__(results)
        finally:
            results['img'] = imgs
        _, resize_dims, crop, flip, rotate = self._last_draw
        fH, fW = self.ida_aug_conf['final_dim']
        n = len(imgs)
        results['img_shape'] = [(fH, fW, 3)] * n
        results['ori_shape'] = [(fH, fW, 3)] * n
        results['pad_shape'] = [(fH, fW, 3)] * n
        results['img_aug'] = dict(resize_dims=tuple(int(v) for v in resize_dims),
                                  crop=tuple(int(v) for v in crop), flip=bool(flip), rotate=float(rotate))
        return results


@PIPELINES.register_module()
class JpegFormatBundle3D(DefaultFormatBundle3D):
    """JPEG bytes + drawn augmentation -> `img_jpeg`, a cpu-only DataContainer of one dict per sample:

    * `data`: uint8 tensor [total bytes], the V = T*N files concatenated (one shared-memory block
      per sample when workers send it, instead of V);
    * `offsets`: int64 tensor [V + 1], file v is `data[offsets[v]:offsets[v + 1]]`;
    * `resize_dims` (W', H'), `crop` (x0, y0, x1, y1), `flip`, `rotate`: the draw of
      `DeferredRandomTransformImage`; the final size is (y1 - y0, x1 - x0).

    `img` is removed. The other keys are formatted as by `DefaultFormatBundle3D`.
    """

    def __call__(self, results):
        if 'img' in results:
            if 'img_aug' not in results:
                raise KeyError('JpegFormatBundle3D: no img_aug in the results; put DeferredRandomTransformImage '
                               'before it')
            imgs = results.pop('img')
            sizes = np.array([len(x) for x in imgs], dtype=np.int64)
            offsets = np.zeros(len(imgs) + 1, dtype=np.int64)
            np.cumsum(sizes, out=offsets[1:])
            data = np.concatenate(imgs) if imgs else np.zeros(0, np.uint8)
            item = dict(data=torch.from_numpy(data), offsets=torch.from_numpy(offsets), **results['img_aug'])
            results['img_jpeg'] = DC(item, cpu_only=True)
        return super().__call__(results)


# CPU step -> GPU-decode step
GPU_DECODE_STEPS = {
    'LoadMultiViewImageFromFiles': 'LoadMultiViewJpegFromFiles',
    'LoadMultiViewImageFromMultiSweeps': 'LoadMultiViewJpegFromMultiSweeps',
    'RandomTransformImage': 'DeferredRandomTransformImage',
    'DefaultFormatBundle3D': 'JpegFormatBundle3D',
}
# steps that work on the decoded pixels and have no GPU-decode counterpart: a pipeline holding one decodes on the CPU
CPU_PIXEL_STEPS = ('PadViewsToSize',)


class GpuDecodeUnsupported(ValueError):
    """A pipeline with a pixel step that the GPU decode cannot defer; the message names it."""
    user_error = True  # engine/cli.py prints the message without a traceback


def cpu_pixel_step(pipeline):
    """The type of the first step of a pipeline config list (nested `transforms` included) that needs decoded
    pixels in the loader (`CPU_PIXEL_STEPS`), or None when the whole pipeline can decode on the device."""
    for step in pipeline:
        if step.get('type') in CPU_PIXEL_STEPS:
            return step['type']
        found = cpu_pixel_step(step.get('transforms', []))
        if found:
            return found
    return None


def gpu_decode_pipeline(pipeline):
    """A copy of a pipeline config list (train or test) with the GPU-decode steps in place of the CPU
    ones, and 'img' -> 'img_jpeg' in the Collect3D keys (also inside MultiScaleFlipAug3D)."""
    blocker = cpu_pixel_step(pipeline)
    if blocker:
        raise GpuDecodeUnsupported(f'GPU image decode: the pipeline step {blocker} works on decoded pixels in the '
                                   f'loader and has no GPU-decode counterpart; set execution.gpu_decode=False')
    out = []
    for step in pipeline:
        step = copy.deepcopy(dict(step))
        kind = step.get('type')
        if kind in GPU_DECODE_STEPS:
            step['type'] = GPU_DECODE_STEPS[kind]
        elif kind == 'Collect3D':
            step['keys'] = ['img_jpeg' if k == 'img' else k for k in step['keys']]
        elif 'transforms' in step:
            step['transforms'] = gpu_decode_pipeline(step['transforms'])
        out.append(step)
    return out
