"""OPSHead.get_occ (docs/method.md, "Inference") on constructed scenes, checked against a numpy re-computation."""
import itertools

import numpy as np
import pytest
import torch
import torch.nn as nn
from mmcv.runner import BaseModule
from mmdet.models.utils.builder import TRANSFORMER

from models.ops_head import OPSHead

# Small scene for the closing tests: 10 x 10 x 4 voxels of 0.4 m.
SMALL_RANGE = [-2.0, -2.0, -0.8, 2.0, 2.0, 0.8]
C = 17


@TRANSFORMER.register_module(name='B1OccFakeTransformer', force=True)
class FakeTransformer(BaseModule):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 3)


def make_head(pc_range=SMALL_RANGE, voxel=0.4, **test_cfg):
    return OPSHead(num_query=1, pc_range=pc_range, voxel_size=[voxel] * 3,
                   transformer=dict(type='B1OccFakeTransformer'), test_cfg=test_cfg)


def logit(p):
    p = np.asarray(p, dtype=np.float64)
    return np.log(p) - np.log1p(-p)


def probs(**cls_prob):
    """17-vector of probabilities: 0.01 everywhere except the given classes (c3=0.9 etc.)."""
    v = np.full(C, 0.01)
    for k, p in cls_prob.items():
        v[int(k[1:])] = p
    return v


def preds_from_points(samples, pc_range):
    """samples: list (batch) of lists of (xyz metres, prob 17-vector), one point per query."""
    q = max(len(s) for s in samples)
    lo, hi = np.array(pc_range[:3]), np.array(pc_range[3:])
    pts = np.zeros((len(samples), q, 1, 3))
    lg = np.full((len(samples), q, 1, C), -20.0)           # padding queries: score ~0, dropped
    for b, sample in enumerate(samples):
        for i, (xyz, p) in enumerate(sample):
            pts[b, i, 0] = (np.asarray(xyz) - lo) / (hi - lo)
            lg[b, i, 0] = logit(p)
    return dict(all_cls_scores=[torch.tensor(lg, dtype=torch.float32)],
                all_refine_pts=[torch.tensor(pts, dtype=torch.float32)])


def centre(v, pc_range=SMALL_RANGE, voxel=0.4, jitter=(0.0, 0.0, 0.0)):
    return [pc_range[a] + (v[a] + 0.5) * voxel + jitter[a] for a in range(3)]


def reference(voxel_means, grid, padding=True, thr=0.5):
    """numpy closing with out-of-bounds neighbours ignored; returns {(x, y, z): label}."""
    dense = np.zeros((C,) + tuple(grid))
    for v, m in voxel_means.items():
        dense[(slice(None),) + v] = m
    if not padding:
        return {v: int(np.argmax(m)) for v, m in voxel_means.items()}

    def pool(a, reduce):
        out = np.empty_like(a)
        for x, y, z in itertools.product(*(range(n) for n in grid)):
            win = a[:, max(0, x - 1):x + 2, max(0, y - 1):y + 2, max(0, z - 1):z + 2]
            out[:, x, y, z] = reduce(win.reshape(C, -1), axis=1)
        return out

    closed = pool(pool(dense, np.max), np.min)
    orig = (dense > thr).any(axis=0)
    closed[:, orig] = dense[:, orig]
    keep = np.argwhere((closed > thr).any(axis=0))
    return {tuple(int(i) for i in v): int(np.argmax(closed[(slice(None),) + tuple(v)]))
            for v in keep}


def as_dict(result):
    assert result['sem_pred'].dtype == np.int64 and result['occ_loc'].dtype == np.int64
    assert result['occ_loc'].shape == (len(result['sem_pred']), 3)
    return {tuple(v): int(c) for v, c in zip(result['occ_loc'].tolist(), result['sem_pred'])}


def small_scene():
    """Points and, independently, the voxel means they must produce."""
    pts, means = [], {}

    def add(v, p_list):
        for k, p in enumerate(p_list):
            pts.append((centre(v, jitter=(0.015 * k - 0.1, 0.03, -0.02)), p))
        means[v] = np.mean(p_list, axis=0)

    ring = [(x, y) for x in (1, 2, 3) for y in (1, 2, 3) if (x, y) != (2, 2)]
    for x, y in ring:                           # hole at (2, 2, 1) closes, class 3
        add((x, y, 1), [probs(c3=0.9)])
    for x, y in ring:                           # class-7 ring around a class-4 voxel
        add((x + 5, y + 5, 1), [probs(c7=0.95)])
    add((7, 7, 1), [probs(c4=0.9)])             # restored: stays 4 although closing says 7
    # Two points whose mean (0.475 / 0.465) stays below 0.5: dropped with padding only.
    add((2, 7, 3), [probs(c1=0.9, c2=0.05), probs(c1=0.05, c2=0.88)])
    # Border hole at (0, 5, 0): every in-bounds neighbour occupied -> filled (needs -inf pad).
    for v in itertools.product((0, 1), (4, 5, 6), (0, 1)):
        if v != (0, 5, 0):
            add(v, [probs(c9=0.8)])
    # Voxel with 11 points: only the first 10 count (label 5, the 11th would make it 6).
    add((8, 2, 2), [probs(c5=0.6, c6=0.55)] * 10)
    pts.append((centre((8, 2, 2), jitter=(0.1, 0.1, 0.1)), probs(c5=0.01, c6=0.99)))
    # Filtered points: score exactly 0.5 (logit 0) and score 0.4, in otherwise empty voxels.
    pts.append((centre((5, 0, 3)), np.full(C, 0.5)))
    pts.append((centre((9, 9, 3)), probs(c2=0.4)))
    return pts, means


@pytest.mark.parametrize('padding', [True, False])
def test_small_scene_matches_reference(padding):
    pts, means = small_scene()
    head = make_head(padding=padding)
    out = head.get_occ(preds_from_points([pts], SMALL_RANGE), img_metas=[{}])
    assert len(out) == 1
    got = as_dict(out[0])
    expect = reference(means, (10, 10, 4), padding=padding)
    assert got == expect
    if padding:
        assert got[(2, 2, 1)] == 3 and got[(0, 5, 0)] == 9     # closed holes (incl. border)
        assert got[(7, 7, 1)] == 4                              # original scores restored
        assert (2, 7, 3) not in got
    else:
        assert (2, 2, 1) not in got and got[(2, 7, 3)] == 1
    assert got[(8, 2, 2)] == 5
    assert (5, 0, 3) not in got and (9, 9, 3) not in got


def test_batch_of_two_is_processed_per_sample():
    pts, means = small_scene()
    other = [(centre((4, 4, 2)), probs(c12=0.7)), (centre((4, 5, 2)), probs(c12=0.7)),
             (centre((4, 6, 2)), probs(c13=0.8))]
    head = make_head()
    out = head.get_occ(preds_from_points([pts, other], SMALL_RANGE))
    assert len(out) == 2
    assert as_dict(out[0]) == reference(means, (10, 10, 4))
    # Closing also grows the segment into the top layer z = 3: erosion ignores out-of-grid
    # cells, so next to the border the dilated copy survives (docs/method.md, "Inference").
    expect = {(4, 4, 2): 12, (4, 5, 2): 12, (4, 6, 2): 13,
              (4, 4, 3): 12, (4, 5, 3): 12, (4, 6, 3): 13}
    assert as_dict(out[1]) == expect
    assert expect == reference({(4, 4, 2): probs(c12=0.7), (4, 5, 2): probs(c12=0.7),
                                (4, 6, 2): probs(c13=0.8)}, (10, 10, 4))


def test_centroid_filter_is_strict_and_per_query():
    # 16 m cube, 0.5 m voxels: normalised coords of +-3 m are dyadic, distances exactly 3.0.
    rng = [-8.0, -8.0, -8.0, 8.0, 8.0, 8.0]
    head = make_head(pc_range=rng, voxel=0.5)
    metres = np.array([[[-3.0, 0, 0], [0.0, 0, 0], [3.0, 0, 0]],            # dist 3, 0, 3
                       [[-2.9, 4, 4], [0.0, 4, 4], [2.9, 4, 4]]])           # all < 3
    pts = (metres - (-8.0)) / 16.0
    lg = np.full((2, 3, C), logit(0.01))
    lg[..., 6] = logit(0.9)
    preds = dict(all_cls_scores=[torch.tensor(lg[None], dtype=torch.float32)],
                 all_refine_pts=[torch.tensor(pts[None], dtype=torch.float32)])
    got = as_dict(head.get_occ(preds)[0])
    vox = lambda m: tuple(int(np.floor((c + 8.0) / 0.5)) for c in m)  # noqa: E731
    expect = {vox(m) for m in [metres[0, 1], metres[1, 0], metres[1, 1], metres[1, 2]]}
    # Every kept voxel is original and isolated (the x neighbours of (16,16,16) are 6 apart).
    assert set(got) == expect and set(got.values()) == {6}


def test_full_grid_geometry_and_empty_output():
    head = make_head(pc_range=[-40.0, -40.0, -1.0, 40.0, 40.0, 5.4])
    assert head.voxel_num.tolist() == [200, 200, 16]
    rng = [-40.0, -40.0, -1.0, 40.0, 40.0, 5.4]
    sample = [(centre((0, 0, 0), rng), probs(c10=0.9)), (centre((199, 199, 15), rng),
                                                         probs(c11=0.7)),
              (centre((120, 80, 3), rng), probs(c15=0.6)),
              ([41.0, 0.0, 0.0], probs(c15=0.9))]                  # outside the range: dropped
    out = head.get_occ(preds_from_points([sample, [(centre((5, 5, 5), rng), probs(c1=0.2))]],
                                         rng))
    assert as_dict(out[0]) == {(0, 0, 0): 10, (199, 199, 15): 11, (120, 80, 3): 15}
    assert out[1]['sem_pred'].shape == (0,) and out[1]['occ_loc'].shape == (0, 3)
    assert out[1]['occ_loc'].dtype == np.int64


def test_unknown_test_cfg_key_is_rejected():
    with pytest.raises(ValueError, match='score_threshold'):
        make_head(score_threshold=0.3)
