"""Device side of the optional GPU image decode (docs/performance.md, "Data loading").

`decode_and_transform(batch_jpeg, device)` turns the `img_jpeg` of a batch made by the GPU-decode
pipeline steps (loaders/pipelines/gpu_decode.py) into the `img` the model takes: uint8
`[B, V, 3, fH, fW]` BGR, the same pixels as the CPU steps (`LoadMultiViewImageFromFiles` +
`RandomTransformImage`) up to JPEG decoder tolerance. The projections (`lidar2img`) were already
updated on the CPU; only the pixel work happens here.

Pixel operations (`resize_crop_flip_rotate`, any device) follow `RandomTransformImage.img_transform`
(PIL): bicubic resize with PIL's antialiasing filter (a = -0.5, support widened by the downscale
factor), horizontal pass first and rounded to uint8 in between as PIL does; crop with zero fill
outside the resized image; horizontal flip; PIL's nearest-neighbour rotation about the crop centre
(zero fill). Decoding uses torchvision.io.decode_jpeg (nvJPEG on CUDA, libjpeg-turbo on the CPU).

No mmcv / mmdet imports: torch and torchvision only.
"""
import math

import torch
import torch.nn.functional as F

__all__ = ['decode_and_transform', 'decode_jpegs', 'resize_crop_flip_rotate', 'split_jpeg_item', 'device_decodes_jpeg']


def split_jpeg_item(item):
    """The V encoded files of one `img_jpeg` entry: list of uint8 [nbytes] CPU tensors (views)."""
    data, offsets = item['data'], [int(v) for v in item['offsets']]
    return [data[offsets[v]:offsets[v + 1]] for v in range(len(offsets) - 1)]


def decode_jpegs(jpegs, device='cuda'):
    """Decode a list of uint8 [nbytes] CPU tensors -> list of uint8 [3, H, W] RGB on `device`
    (one batched nvJPEG call on CUDA)."""
    from torchvision.io import ImageReadMode, decode_jpeg
    if not jpegs:
        return []
    device = torch.device(device)
    out = decode_jpeg(list(jpegs), mode=ImageReadMode.RGB, device=device)
    return list(out)


def device_decodes_jpeg(device):
    """Whether torchvision decodes JPEGs on `device` here (nvJPEG on CUDA): one 8x8 image, encoded on the CPU,
    decoded there and compared."""
    from torchvision.io import encode_jpeg
    image = torch.full((3, 8, 8), 128, dtype=torch.uint8)
    try:
        decoded = decode_jpegs([encode_jpeg(image)], device)[0]
    except (RuntimeError, NotImplementedError):
        return False
    # a flat grey block survives JPEG's quantisation within a grey level
    return bool((decoded.cpu().int() - 128).abs().max() <= 1)


def _resize_pil_bicubic(x, size):
    """float [n, C, H, W] -> float [n, C, h, w] rounded to integers: PIL's BICUBIC resize of uint8 images
    (antialiased bicubic, horizontal pass, round + clip to uint8, vertical pass, round + clip)."""
    H, W = x.shape[-2:]
    h, w = size
    if w != W:
        x = F.interpolate(x, size=(H, w), mode='bicubic', align_corners=False, antialias=True)
        x = x.round_().clamp_(0, 255)
    if h != H:
        x = F.interpolate(x, size=(h, w), mode='bicubic', align_corners=False, antialias=True)
        x = x.round_().clamp_(0, 255)
    return x


def _pil_fix(v):
    """Pillow's FIX(): 16.16 fixed point, FLOOR(v * 65536 + 0.5) with C's truncating FLOOR for v >= 0."""
    v = v * 65536.0 + 0.5
    return int(math.floor(v)) if v < 0 else int(v)


def _rotate_nearest(x, angle):
    """PIL `Image.rotate(angle)` (degrees, counter-clockwise, about the centre, nearest, zero fill) of
    uint8 [n, C, h, w]: PIL's copy / transpose fast paths for 0, 180 (and 90 / 270 on square images),
    else its inverse affine map in 16.16 fixed point (libImaging `affine_fixed`), reproduced exactly."""
    angle = angle % 360.0
    if angle == 0:
        return x
    if angle == 180:
        return x.flip(-1).flip(-2)
    h, w = x.shape[-2:]
    if angle in (90, 270) and w == h:
        return torch.rot90(x, 1 if angle == 90 else -1, dims=(-2, -1))
    cx, cy = w / 2, h / 2
    a = -math.radians(angle)
    m = [round(math.cos(a), 15), round(math.sin(a), 15), 0.0, round(-math.sin(a), 15), round(math.cos(a), 15), 0.0]
    m[2] = m[0] * -cx + m[1] * -cy + cx
    m[5] = m[3] * -cx + m[4] * -cy + cy
    # PIL's fixed-point path (taken whenever the corners map inside +-32768 pixels, i.e. always here)
    a0, a1, a3, a4 = _pil_fix(m[0]), _pil_fix(m[1]), _pil_fix(m[3]), _pil_fix(m[4])
    a2 = _pil_fix(m[2] + m[0] * 0.5 + m[1] * 0.5)
    a5 = _pil_fix(m[5] + m[3] * 0.5 + m[4] * 0.5)
    ys = torch.arange(h, device=x.device, dtype=torch.int64)[:, None]
    xs = torch.arange(w, device=x.device, dtype=torch.int64)[None, :]
    xin = (a2 + xs * a0 + ys * a1) >> 16
    yin = (a5 + xs * a3 + ys * a4) >> 16
    valid = (xin >= 0) & (xin < w) & (yin >= 0) & (yin < h)
    index = (yin.clamp(0, h - 1) * w + xin.clamp(0, w - 1)).reshape(-1)
    out = x.flatten(-2)[..., index].reshape(x.shape)
    return out * valid.to(x.dtype)


def resize_crop_flip_rotate(imgs, resize_dims, crop, flip=False, rotate=0.0):
    """The tensor version of `RandomTransformImage.img_transform` for a stack of images.

    Args:
        imgs: uint8 [n, C, H, W] (any device, any channel order).
        resize_dims: (W', H') of the resized image.
        crop: (x0, y0, x1, y1) in the resized image; outside it is zero.
        flip: horizontal flip after the crop.
        rotate: degrees (PIL convention), after the flip.
    Returns:
        uint8 [n, C, y1 - y0, x1 - x0].
    """
    if imgs.dtype != torch.uint8 or imgs.dim() != 4:
        raise TypeError(f'resize_crop_flip_rotate takes uint8 [n, C, H, W], got {imgs.dtype} {tuple(imgs.shape)}')
    new_w, new_h = (int(v) for v in resize_dims)
    x0, y0, x1, y1 = (int(v) for v in crop)
    n, C, H, W = imgs.shape
    out = imgs.new_zeros((n, C, y1 - y0, x1 - x0))
    # the part of the crop inside the resized image
    sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x1, new_w), min(y1, new_h)
    if sx1 > sx0 and sy1 > sy0 and n:
        if (new_h, new_w) == (H, W):
            resized = imgs[..., sy0:sy1, sx0:sx1]
        else:
            resized = _resize_pil_bicubic(imgs.float(), (new_h, new_w))[..., sy0:sy1, sx0:sx1].to(torch.uint8)
        out[..., sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = resized
    if flip:
        out = out.flip(-1)
    if rotate:
        out = _rotate_nearest(out, float(rotate))
    return out


def decode_and_transform(batch_jpeg, device='cuda', chunk_size=16):
    """`img_jpeg` of a batch -> uint8 `[B, V, 3, fH, fW]` BGR on `device`, what the CPU pipeline's `img` holds.

    Args:
        batch_jpeg (list[dict]): B entries of `JpegFormatBundle3D` (`data`, `offsets`, `resize_dims`,
            `crop`, `flip`, `rotate`); all with the same V and crop size.
        device: where to decode and transform ('cuda' -> nvJPEG; 'cpu' works too, for tests).
        chunk_size (int): images resized per call (float32 working memory ~ chunk_size x 17 MB at 1600x900).
    """
    if not batch_jpeg:
        raise ValueError('decode_and_transform: empty batch')
    device = torch.device(device)
    sizes = {(len(item['offsets']) - 1, item['crop'][3] - item['crop'][1], item['crop'][2] - item['crop'][0])
             for item in batch_jpeg}
    if len(sizes) != 1:
        raise ValueError(f'decode_and_transform: samples differ in (views, height, width): {sorted(sizes)}')
    V, fH, fW = sizes.pop()
    out = torch.empty((len(batch_jpeg), V, 3, fH, fW), dtype=torch.uint8, device=device)
    for b, item in enumerate(batch_jpeg):
        decoded = decode_jpegs(split_jpeg_item(item), device)
        for start in range(0, V, chunk_size):
            part = decoded[start:start + chunk_size]
            shapes = {tuple(img.shape) for img in part}
            groups = [torch.stack(part)] if len(shapes) == 1 else [img[None] for img in part]
            rows = []
            for imgs in groups:
                rows.append(resize_crop_flip_rotate(imgs, item['resize_dims'], item['crop'], item['flip'],
                                                    item['rotate']))
            # RGB (decoder) -> BGR (the loaders' channel order)
            out[b, start:start + len(part)] = torch.cat(rows).flip(1)
        del decoded
    return out
