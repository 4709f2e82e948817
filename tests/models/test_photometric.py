"""GPU photometric distortion (docs/method.md, "Image branch") against a per-pixel colorsys reference with the
same draws."""
import colorsys

import numpy as np
import pytest
import torch

from models.photometric import GpuPhotoMetricDistortion, hsv_to_rgb, rgb_to_hsv

EPS32 = float(np.finfo(np.float32).eps)   # 2^-23: one float32 rounding moves a value by <= half of it


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
    # float32 against float64, per channel value V (first order, in 2^-24 units of V): ~5 roundings before the
    # HSV split (brightness, contrast, / 255, relative to the value); the hue's ratio (g - b) / delta carries ~10 of V
    # over delta, which the chroma (<= 1.5 delta after saturation) turns into <= 15 of V; k = (n + h / 60) mod 6
    # and 4 - k round by <= 21 of 1, times the chroma (<= 1.5 V): 32; ~5 more after: <= 57 * 2^-24 < 30 eps
    np.testing.assert_allclose(out.double().numpy(), ref, rtol=0, atol=30 * EPS32 * np.abs(ref).max())
    # each image has its own draw: the per-image change is not the same everywhere (1e-3 grey levels: above the
    # float32 round trip of an untouched image, <= 30 eps of 215 ≈ 7.7e-4, far below what a draw changes)
    changed = (out - imgs).abs().flatten(1).max(1).values > 1e-3
    # an image is left untouched with probability 1/2^4 * 7/12 ≈ 0.036 (four coins, no swap or the identity
    # permutation): 8 or more of 12 change unless something is wrong (P(< 8) ≈ 4e-5)
    assert changed.sum() >= 8


def test_values_are_not_clipped():
    aug = GpuPhotoMetricDistortion()
    imgs = torch.full((40, 3, 2, 2), 250.0)
    imgs[:, 0] = 5.0        # saturated colour: saturation / contrast can leave [0, 255]
    np.random.seed(0)
    out = aug(imgs)
    # half a grey level outside [0, 255]: far beyond float32 rounding (<= 30 eps of 255 ≈ 1e-3)
    assert out.max() > 255.5 or out.min() < -0.5


def test_hsv_roundtrip_and_known_values():
    rgb = torch.tensor([[255.0, 0, 0], [0, 255, 0], [0, 0, 255], [128, 128, 128], [255, 255, 0], [10, 200, 100]])
    hsv = rgb_to_hsv(rgb.t()[None, :, :, None] / 255.0)[0, :, :, 0].t()
    # pure colours and grey: ratios 0 or 1 plus integer offsets, times 60, are exact; V = 128 / 255 is the float32
    # quotient
    np.testing.assert_array_equal(hsv[:5].numpy(), np.array([[0, 1, 1], [120, 1, 1], [240, 1, 1],
                                                             [0, 0, np.float32(128) / np.float32(255)], [60, 1, 1]],
                                                            dtype=np.float32))
    for (r, g, b), (h, s, v) in zip(rgb.numpy() / 255.0, hsv.numpy()):
        eh, es, ev = colorsys.rgb_to_hsv(r, g, b)
        # hue = 60 (x + offset), x = (b - r) / (g - r) etc.: the / 255 inputs, the two differences (channels well
        # apart here), the ratio, + offset and * 60 round once each: <= 60 * (5.3 |x| + |x + offset|) + hue,
        # in 2^-24 units, <= 60 * (5.3 + 5) + 360 < 1000 * 2^-24 = 500 eps; S = delta / max: <= 5 * 2^-24, V: one
        assert h == pytest.approx(eh * 360, abs=500 * EPS32) and (s, v) == pytest.approx((es, ev), abs=3 * EPS32)
    back = hsv_to_rgb(hsv.t()[None, :, :, None])[0, :, :, 0].t() * 255.0
    # k = (n + h / 60) mod 6 carries the hue's <= 500 eps / 60 and its own roundings (n + ..., 4 - k: <= 15 *
    # 2^-24), S and V a few 2^-24: <= 20 eps of V = 1, times 255
    np.testing.assert_allclose(back.numpy(), rgb.numpy(), rtol=0, atol=20 * EPS32 * 255)


def test_rejects_bad_input():
    with pytest.raises(ValueError, match=r'\[n, 3, H, W\]'):
        GpuPhotoMetricDistortion()(torch.zeros(2, 3, 4, dtype=torch.float32))
    with pytest.raises(ValueError, match='float'):
        GpuPhotoMetricDistortion()(torch.zeros(2, 3, 4, 4, dtype=torch.uint8))
