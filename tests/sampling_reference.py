"""Float64 references of bilinear sampling shared by the sampling tests (tests/models/csrc/test_wrapper.py,
tests/models/test_ops_sampling.py)."""
import math

import numpy as np


def bilinear_ref(img, h, w):
    """img [H, W, C] float64; align_corners=True pixel coords (h, w); zero outside."""
    H, W, C = img.shape
    if not (-1 < h < H and -1 < w < W):
        return np.zeros(C)
    h0, w0 = math.floor(h), math.floor(w)
    acc = np.zeros(C)
    for hh in (h0, h0 + 1):
        for ww in (w0, w0 + 1):
            if 0 <= hh < H and 0 <= ww < W:
                acc += (1 - abs(h - hh)) * (1 - abs(w - ww)) * img[hh, ww]
    return acc
