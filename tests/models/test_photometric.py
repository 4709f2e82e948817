"""GPU photometric distortion (docs/method.md, "Image branch") against a per-pixel colorsys reference with the
same draws."""
import colorsys

import numpy as np
import pytest
import torch

from models.photometric import GpuPhotoMetricDistortion, hsv_to_rgb, rgb_to_hsv


def reference(img_bgr):
    """One image [3, H, W] float64 BGR; draws from numpy's global RNG in the order of models/photometric.py."""
    rgb = img_bgr[::-1].copy()
    if np.random.randint(2):
        rgb += np.random.uniform(-32, 32)
    mode = np.random.randint(2)
    if mode == 0 and np.random.randint(2):
        rgb *= np.random.uniform(0.5, 1.5)
    sat_factor = np.random.uniform(0.5, 1.5) if np.random.randint(2) else None
    hue_delta = np.random.uniform(-18, 18) if np.random.randint(2) else None
    out = np.empty_like(rgb)
    for y in range(rgb.shape[1]):
        for x in range(rgb.shape[2]):
            h, s, v = colorsys.rgb_to_hsv(*(rgb[:, y, x] / 255.0))
            h *= 360.0
            if sat_factor is not None:
                s *= sat_factor
            if hue_delta is not None:
                h += hue_delta
                h = h - 360 if h > 360 else (h + 360 if h < 0 else h)
            out[:, y, x] = np.array(colorsys.hsv_to_rgb(h / 360.0, s, v)) * 255.0
    if mode == 1 and np.random.randint(2):
        out *= np.random.uniform(0.5, 1.5)
    if np.random.randint(2):
        out = out[np.random.permutation(3)]
    return out[::-1]


def test_matches_reference_draw_by_draw():
    aug = GpuPhotoMetricDistortion()
    imgs = torch.from_numpy(np.random.RandomState(0).uniform(40, 215, (12, 3, 5, 7))).float()
    np.random.seed(123)
    out = aug(imgs.clone())
    state_after = np.random.get_state()[1].copy()
    np.random.seed(123)
    ref = np.stack([reference(img.double().numpy()) for img in imgs])
    # same number and order of draws, and the same pixels
    assert np.array_equal(np.random.get_state()[1], state_after)
    np.testing.assert_allclose(out.double().numpy(), ref, rtol=1e-5, atol=5e-3)
    # each image has its own draw: the per-image change is not the same everywhere
    changed = (out - imgs).abs().flatten(1).max(1).values > 1e-3
    assert changed.sum() >= 8


def test_values_are_not_clipped():
    aug = GpuPhotoMetricDistortion()
    imgs = torch.full((40, 3, 2, 2), 250.0)
    imgs[:, 0] = 5.0        # saturated colour: saturation / contrast can leave [0, 255]
    np.random.seed(0)
    out = aug(imgs)
    assert out.max() > 255.5 or out.min() < -0.5


def test_hsv_roundtrip_and_known_values():
    rgb = torch.tensor([[255.0, 0, 0], [0, 255, 0], [0, 0, 255], [128, 128, 128], [255, 255, 0], [10, 200, 100]])
    hsv = rgb_to_hsv(rgb.t()[None, :, :, None] / 255.0)[0, :, :, 0].t()
    np.testing.assert_allclose(hsv[:5].numpy(), [[0, 1, 1], [120, 1, 1], [240, 1, 1], [0, 0, 128 / 255], [60, 1, 1]],
                               atol=1e-6)
    for (r, g, b), (h, s, v) in zip(rgb.numpy() / 255.0, hsv.numpy()):
        eh, es, ev = colorsys.rgb_to_hsv(r, g, b)
        assert (h, s, v) == pytest.approx((eh * 360, es, ev), abs=1e-5)
    back = hsv_to_rgb(hsv.t()[None, :, :, None])[0, :, :, 0].t() * 255.0
    np.testing.assert_allclose(back.numpy(), rgb.numpy(), atol=1e-4)


def test_rejects_bad_input():
    with pytest.raises(ValueError, match=r'\[n, 3, H, W\]'):
        GpuPhotoMetricDistortion()(torch.zeros(2, 3, 4, dtype=torch.float32))
    with pytest.raises(ValueError, match='float'):
        GpuPhotoMetricDistortion()(torch.zeros(2, 3, 4, 4, dtype=torch.uint8))
