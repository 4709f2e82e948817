"""Point matchers of the set-to-set losses (docs/method.md, "Losses"), apart from the head and the criterion.

A matcher pairs the predicted points of one sample with its ground-truth points, without gradient; the
criterion (models/criterion.py) turns a match into loss terms; the head (models/ops_head.py) calls both for
every decoder layer. Matchers are registered in `MATCHERS` and built from config dicts with
`build_matcher(dict(type=...))`, like the matchers of SparseOcc and DETR's HungarianMatcher.

`NearestPointMatcher` is the matching of OPS and OPUS-V2: exact 1-NN in both directions over the full sets,
distances in float32, ties to the lowest index (models/knn.py).

Symbols: Ng / Np ground-truth / predicted points of one sample, metres in the frame of the losses.
"""
from typing import NamedTuple

import torch
from mmcv.utils import Registry, build_from_cfg

from .knn import BACKENDS, DEFAULT_MAX_PAIRS, knn1_bidirectional

__all__ = ['MATCHERS', 'PointMatch', 'NearestPointMatcher', 'build_matcher']

MATCHERS = Registry('point matcher')


def build_matcher(cfg):
    """A matcher from its config dict (`type` names a class registered in `MATCHERS`)."""
    return build_from_cfg(cfg, MATCHERS)


class PointMatch(NamedTuple):
    """The match of one sample, both directions.

    pred_for_gt: int64 `[Ng]`, a(j) = the prediction matched to ground-truth point j.
    gt_for_pred: int64 `[Np]`, b(i) = the ground-truth point matched to prediction i.
    """
    pred_for_gt: torch.Tensor
    gt_for_pred: torch.Tensor


@MATCHERS.register_module()
class NearestPointMatcher:
    """Each ground-truth point to its nearest prediction and each prediction to its nearest ground-truth point.

    Exact 1-NN over the full sets, squared distances in float32 (float64 inputs are matched in float32, as the
    original's CUDA kNN), ties to the lowest index (models/knn.py). No parameters, no state.

    Args:
        backend (str): models/knn.py's backend ('auto': the compiled kernel on CUDA when built, the KD-tree on the
            CPU; 'torch' forces the tiled PyTorch path, which reads nothing back to the host).
        max_pairs (int): tile bound of the PyTorch path.
    """

    def __init__(self, backend='auto', max_pairs=DEFAULT_MAX_PAIRS):
        if backend not in BACKENDS:
            raise ValueError(f'NearestPointMatcher: backend must be one of {BACKENDS}, got {backend!r}')
        self.backend, self.max_pairs = backend, int(max_pairs)

    @torch.no_grad()
    def __call__(self, gt_points, pred_points):
        """
        Args:
            gt_points (Tensor): `[Ng, 3]`, Ng >= 1.
            pred_points (Tensor): `[Np, 3]`, Np >= 1, same device (the gradient is not followed).
        Returns:
            PointMatch: a(j) `[Ng]`, b(i) `[Np]`.
        """
        pred_for_gt, gt_for_pred = knn1_bidirectional(gt_points, pred_points, max_pairs=self.max_pairs,
                                                      backend=self.backend)
        return PointMatch(pred_for_gt, gt_for_pred)

    def __repr__(self):
        return f'{type(self).__name__}(backend={self.backend!r}, max_pairs={self.max_pairs})'
