"""`PadViewsToSize`: the images of cameras of different sizes on one canvas size, so that one augmentation draw
and one stacked tensor serve all views (Occ3D-Waymo: front cameras 1920x1280, side cameras 1920x886)."""
import numpy as np
from mmdet.datasets.builder import PIPELINES

__all__ = ['PadViewsToSize']


@PIPELINES.register_module()
class PadViewsToSize:
    """Put every view's image on a zero canvas of `size` (H, W) without resampling it.

    The image keeps its pixels and sits at the left edge of the canvas, at the top (`align='top'`: the zeros are
    below it, pixel coordinates unchanged) or at the bottom (`align='bottom'`: the zeros are above it, rows
    shifted down by H - h). The shift is folded into the projections: `lidar2img` of view i (all T*N entries,
    also those whose images online mode does not load) is left-multiplied by the row shift of its camera
    n = i mod N, N = len(`img_filename`) (the current frame's cameras; a camera has one size in every frame).

    Place it after the loading steps and before `RandomTransformImage`, whose `H`, `W` are then `size`. With the
    bottom crop of `RandomTransformImage` (it keeps the lowest rows of the resized canvas), `align='bottom'` keeps
    the smaller images whole and drops the top rows of the tall ones (the sky of a forward camera).

    Adds `pad_views = dict(size, rows)` (rows: each camera's shift) and sets `img_shape` / `pad_shape` to the
    canvas; `ori_shape` keeps the images' own sizes. Works on decoded images only (not on the GPU-decode path's
    JPEG bytes).

    Args:
        size (tuple[int]): (H, W) of the canvas, at least every camera's image size.
        align (str): 'top' or 'bottom', where the image sits vertically.
    """

    def __init__(self, size, align='top'):
        if len(size) != 2 or min(size) < 1:
            raise ValueError(f'PadViewsToSize: size must be (H, W) in pixels, got {size}')
        if align not in ('top', 'bottom'):
            raise ValueError(f'PadViewsToSize: align must be "top" or "bottom", got {align!r}')
        self.size = (int(size[0]), int(size[1]))
        self.align = align

    def __call__(self, results):
        height, width = self.size
        imgs = results['img']
        num_cams = len(results['img_filename'])
        if any(np.ndim(img) != 3 for img in imgs):
            raise TypeError('PadViewsToSize works on decoded [H, W, C] images; the GPU-decode pipeline carries JPEG '
                            'bytes and cannot pad views (use the CPU loading steps for cameras of different sizes)')
        cam_shapes = [imgs[n].shape for n in range(num_cams)]
        for n, (h, w, _) in enumerate(cam_shapes):
            if h > height or w > width:
                raise ValueError(f'PadViewsToSize: the image of camera {n} ({results["img_filename"][n]}) is {h}x{w} '
                                 f'(HxW), larger than size {height}x{width}; set size to the largest camera\'s size')
        padded = []
        for i, img in enumerate(imgs):
            if img.shape != cam_shapes[i % num_cams]:
                raise ValueError(f'PadViewsToSize: view {i} ({results["filename"][i]}) is {img.shape[0]}x'
                                 f'{img.shape[1]}, but the current image of its camera {i % num_cams} is '
                                 f'{cam_shapes[i % num_cams][0]}x{cam_shapes[i % num_cams][1]}')
            top = height - img.shape[0] if self.align == 'bottom' else 0
            canvas = np.zeros((height, width) + img.shape[2:], dtype=img.dtype)
            canvas[top:top + img.shape[0], :img.shape[1]] = img
            padded.append(canvas)
        rows = [height - h if self.align == 'bottom' else 0 for h, _, _ in cam_shapes]
        lidar2img = []
        for i, matrix in enumerate(results['lidar2img']):
            # rows of lidar2img are (u*d, v*d, d, 1): v + dy is row 1 plus dy times row 2
            shift = np.eye(4)
            shift[1, 2] = rows[i % num_cams]
            lidar2img.append((shift @ np.asarray(matrix, dtype=np.float64)).astype(np.float32))
        results['img'] = padded
        results['lidar2img'] = lidar2img
        channels = padded[0].shape[2:] if padded else (3,)
        results['img_shape'] = [(height, width) + channels] * len(padded)
        results['pad_shape'] = [(height, width) + channels] * len(padded)
        results['pad_views'] = dict(size=self.size, rows=rows)
        return results

    def __repr__(self):
        return f'{self.__class__.__name__}(size={self.size}, align={self.align!r})'
