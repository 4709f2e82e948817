"""Photometric distortion of the input images on the device (docs/method.md, "Image branch", step 2),
training only.

Symbols: n images `[n, 3, H, W]` (the B*V images of a batch), channels BGR on input.

Every image gets its own draw from numpy's global RNG, in this order per image (images in batch
order): brightness coin [delta], contrast mode, (mode 0: contrast coin [alpha]), saturation coin
[factor], hue coin [delta], (mode 1: contrast coin [alpha]), channel-swap coin [permutation].
Values are never clipped: intermediate values may leave [0, 255] and the HSV maths runs on them as is.

`set_sample_seeds(seeds)` (training with engine.distributed_hooks.SampleSeedHook) makes the draws of
each sample come from its own RNG instead (same order of draws per image), so they no longer depend
on which process, or which position of a per-process batch, holds the sample: results then do not
depend on the number of processes. Without it (the default) nothing changes.
"""
import numpy as np
import torch

__all__ = ['GpuPhotoMetricDistortion', 'rgb_to_hsv', 'hsv_to_rgb']


def rgb_to_hsv(rgb):
    """`[..., 3, H, W]` RGB (any scale) -> H in degrees [0, 360), S = (max - min) / max, V = max (same scale).

    Grey pixels (max == min) get H = 0; max == 0 gives S = 0.
    """
    r, g, b = rgb.unbind(-3)
    maxc, _ = rgb.max(-3)
    minc, _ = rgb.min(-3)
    delta = maxc - minc
    safe_delta = torch.where(delta == 0, torch.ones_like(delta), delta)
    hue_r = torch.remainder((g - b) / safe_delta, 6.0)
    hue_g = (b - r) / safe_delta + 2.0
    hue_b = (r - g) / safe_delta + 4.0
    # ties resolved in the order r, g, b (first channel holding the maximum)
    hue = torch.where(maxc == r, hue_r, torch.where(maxc == g, hue_g, hue_b))
    hue = torch.where(delta == 0, torch.zeros_like(hue), hue) * 60.0
    sat = torch.where(maxc == 0, torch.zeros_like(maxc), delta / torch.where(maxc == 0, torch.ones_like(maxc), maxc))
    return torch.stack([hue, sat, maxc], dim=-3)


def hsv_to_rgb(hsv):
    """Inverse of `rgb_to_hsv`: H in degrees, S, V -> `[..., 3, H, W]` RGB in V's scale.

    channel_n = V - V*S*clamp(min(k, 4 - k), 0, 1), k = (n + H/60) mod 6, n = 5, 3, 1 for R, G, B
    (linear in S and V, so out-of-range values extrapolate like the sector formula).
    """
    h, s, v = hsv.unbind(-3)
    chroma = v * s
    out = []
    for n in (5.0, 3.0, 1.0):
        k = torch.remainder(n + h / 60.0, 6.0)
        out.append(v - chroma * torch.clamp(torch.minimum(k, 4.0 - k), 0.0, 1.0))
    return torch.stack(out, dim=-3)


class GpuPhotoMetricDistortion:
    """Random brightness, contrast, saturation, hue and channel swap, one draw per image.

    Args:
        brightness_delta (float): brightness shift drawn from U(-delta, delta) (0..255 pixel units).
        contrast_range (tuple): contrast factor range.
        saturation_range (tuple): saturation factor range.
        hue_delta (float): hue shift in degrees, U(-delta, delta).
    """

    def __init__(self, brightness_delta=32, contrast_range=(0.5, 1.5), saturation_range=(0.5, 1.5), hue_delta=18):
        self.brightness_delta = brightness_delta
        self.contrast_lower, self.contrast_upper = contrast_range
        self.saturation_lower, self.saturation_upper = saturation_range
        self.hue_delta = hue_delta

    # per-sample RNGs of the current batch (set_sample_seeds); None: numpy's global RNG
    _sample_rngs = None

    def set_sample_seeds(self, seeds):
        """Draw the next batches' parameters from one RNG per sample (None: numpy's global RNG again).

        Args:
            seeds (list[int] | None): one seed per sample of the batch, in batch order; the images of
                a call are split evenly among them (sample-major, as `OPS.extract_feat` flattens
                `[B, V]`). The RNGs continue across calls until the next set_sample_seeds.
        """
        self._sample_rngs = None if seeds is None else [np.random.RandomState(int(s) % 2 ** 32) for s in seeds]

    def draw(self, num_images):
        """Draw the parameters of `num_images` images from numpy's global RNG (order: class docstring),
        or from the per-sample RNGs of `set_sample_seeds`.

        Returns:
            dict of numpy arrays: brightness [n] (0 = none), contrast_first [n], contrast_last [n]
            (1 = none), saturation [n] (1 = none), hue [n] (0 = none), perm [n, 3] (identity = none).
        """
        rngs = self._sample_rngs
        if rngs is not None and (not rngs or num_images % len(rngs)):
            raise ValueError(f'GpuPhotoMetricDistortion: {num_images} images cannot be split among the '
                             f'{len(rngs)} samples given to set_sample_seeds')
        per_sample = num_images // len(rngs) if rngs else num_images
        p = dict(brightness=np.zeros(num_images), contrast_first=np.ones(num_images),
                 contrast_last=np.ones(num_images), saturation=np.ones(num_images), hue=np.zeros(num_images),
                 perm=np.tile(np.arange(3), (num_images, 1)))
        for i in range(num_images):
            rng = np.random if rngs is None else rngs[i // per_sample]
            if rng.randint(2):
                p['brightness'][i] = rng.uniform(-self.brightness_delta, self.brightness_delta)
            mode = rng.randint(2)
            if mode == 0 and rng.randint(2):
                p['contrast_first'][i] = rng.uniform(self.contrast_lower, self.contrast_upper)
            if rng.randint(2):
                p['saturation'][i] = rng.uniform(self.saturation_lower, self.saturation_upper)
            if rng.randint(2):
                p['hue'][i] = rng.uniform(-self.hue_delta, self.hue_delta)
            if mode == 1 and rng.randint(2):
                p['contrast_last'][i] = rng.uniform(self.contrast_lower, self.contrast_upper)
            if rng.randint(2):
                p['perm'][i] = rng.permutation(3)
        return p

    def __call__(self, imgs):
        """`[n, 3, H, W]` float BGR in 0..255 -> distorted `[n, 3, H, W]` BGR (not clipped)."""
        if imgs.dim() != 4 or imgs.shape[1] != 3 or not imgs.is_floating_point():
            raise ValueError(f'GpuPhotoMetricDistortion expects float images [n, 3, H, W], got '
                             f'{tuple(imgs.shape)} {imgs.dtype}')
        n = imgs.shape[0]
        p = self.draw(n)

        def col(name):
            return torch.as_tensor(p[name], dtype=imgs.dtype, device=imgs.device).view(n, 1, 1)

        # the identity values of skipped steps (+0, *1) leave those images bit-identical
        rgb = imgs.flip(1) + col('brightness')[:, None]
        rgb = rgb * col('contrast_first')[:, None]
        hsv = rgb_to_hsv(rgb / 255.0)
        hue = hsv[:, 0] + col('hue')
        hue = torch.where(hue > 360, hue - 360, hue)
        hue = torch.where(hue < 0, hue + 360, hue)
        hsv = torch.stack([hue, hsv[:, 1] * col('saturation'), hsv[:, 2]], dim=1)
        rgb = hsv_to_rgb(hsv) * 255.0
        rgb = rgb * col('contrast_last')[:, None]
        perm = torch.as_tensor(p['perm'], device=imgs.device)
        rgb = rgb.gather(1, perm[:, :, None, None].expand_as(rgb))
        return rgb.flip(1)
