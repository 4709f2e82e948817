"""OPUS-V2's CPD module on the dense grid (accel/dense_cpd.py) against the faithful sparse module
(models/densifier.py): the same voxels, the same logits there, the same occupancy grid; and the swapped heads
(accel/modules.py) that make the V2 test step static."""
import copy

import numpy as np
import pytest
import torch

from accel import accelerate, policy_from_config
from accel.cuda_graph import EAGER, GraphedFunction
from accel.dense_cpd import dense_cpd, dense_occ_grids, fits_dense_cpd
from accel.modules import FUSED_MODULES, DenseCPDOPUSV2Head
from core.benchmarks import NUSCENES_OCCUPANCY, OCC3D_NUSCENES
from host_tensor_spy import HostTensorSpy
from models.densifier import Densifier
from models.opusv2_head import OPUSV2Head
from tiny_opusv2 import tiny_batch, tiny_detector

# 0.5 m voxels, 12 x 10 x 6 cells; the points below spread a little past it (clamped into the border cells)
PC_RANGE = [-3.0, -2.5, -1.0, 3.0, 2.5, 2.0]
GRID = (12, 10, 6)
EMPTY = 17
SCORE_THR = 0.25
EPS32 = torch.finfo(torch.float32).eps
EPS64 = torch.finfo(torch.float64).eps


def densifier(dtype, seed=0):
    """A CPD module in eval mode with running statistics and affine parameters away from the identity."""
    torch.manual_seed(seed)
    d = Densifier(8, (16, 16), 17, PC_RANGE, GRID)
    for pfn in d.pfn_layers:
        pfn.norm.running_mean.uniform_(-0.3, 0.3)
        pfn.norm.running_var.uniform_(0.5, 2.0)
        pfn.norm.weight.data.uniform_(0.5, 1.5)
        pfn.norm.bias.data.uniform_(-0.3, 0.3)
    # the last conv's logits spread around the threshold's -1.1 (scores on both sides of it)
    d.cls_branch[2].bias.data.uniform_(-1.6, -1.0)
    d.cls_branch[2].weight.data.mul_(8.0)
    return d.to(dtype).eval()


def inputs(dtype, B=2, Q=9, P=6, seed=1):
    """Point features and normalised points in clusters (several points per voxel, neighbouring voxels)."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.rand(B, Q, 1, 3, generator=g, dtype=torch.float64) * 1.1 - 0.05
    points = centres + torch.randn(B, Q, P, 3, generator=g, dtype=torch.float64) * 0.08
    feats = torch.randn(B, Q, P, 8, generator=g, dtype=torch.float64)
    return feats.to(dtype), points.to(dtype)


def faithful_grids(logits, coords, B):
    """`OPUSV2Head.get_occ_grids`' rule on the sparse output, written out."""
    score, label = logits.sigmoid().max(dim=-1)
    grids = torch.full((B,) + GRID, EMPTY, dtype=torch.uint8)
    keep = score > SCORE_THR
    c = coords[keep]
    grids[c[:, 0], c[:, 1], c[:, 2], c[:, 3]] = label[keep].to(torch.uint8)
    return grids, score


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU')


@pytest.mark.parametrize('dtype, device', [(torch.float64, 'cpu'), (torch.float32, 'cpu'),
                                           pytest.param(torch.float32, 'cuda', marks=CUDA)])
def test_the_dense_module_gives_the_sparse_modules_voxels_and_logits(dtype, device):
    """On CUDA the convolutions are cuDNN's, in float32 (no TF32 outside a TF32 precision scope)."""
    d = densifier(dtype).to(device)
    feats, points = (t.to(device) for t in inputs(dtype))
    with torch.no_grad():
        sparse_logits, coords = d(feats, points)                                   # [U', K], [U', 4]
        logits, active = dense_cpd(d, feats, points)                               # [B, K, X, Y, Z], [B, X, Y, Z]
    B = points.shape[0]
    assert logits.shape == (B, 17) + GRID and active.shape == (B,) + GRID
    assert 30 < coords.shape[0] < active[0].numel(), 'the test needs a grown set that is neither tiny nor the grid'
    assert torch.equal(active.nonzero(), coords), 'the active cells must be the regular conv\'s sites, in order'
    at_sites = logits.permute(0, 2, 3, 4, 1)[active]                                # [U', K], (b, x, y, z) order
    # Both compute the same sums in other orders: the VFE layers identically (same code), then two chained
    # convolutions over 27 taps x 16 channels. A 432-term sum in another order moves by at most 432 roundings of
    # the sum of its terms' magnitudes; chained, a logit moves by at most 2 * 432 eps * M (first order), M the
    # magnitude sum through both convolutions: the same module with |weights| and |biases| (its VFE output,
    # after a ReLU, is already non-negative), in float64
    magnitudes = copy.deepcopy(d).double()
    with torch.no_grad():
        for conv in (magnitudes.cls_branch[0], magnitudes.cls_branch[2]):
            conv.weight.abs_()
            conv.bias.abs_()
        M = dense_cpd(magnitudes, feats.double(), points.double())[0].permute(0, 2, 3, 4, 1)[active]   # [U', K]
    tol = 2 * 432 * (EPS64 if dtype == torch.float64 else EPS32) * M
    err = (at_sites.double() - sparse_logits.double()).abs()
    assert (err <= tol).all(), f'logits differ by up to {(err / tol).max():.2f}x the rounding bound'
    if dtype != torch.float64:
        return     # float32: a score may lie within the rounding tolerance of the threshold; the grids in float64
    expected, score = faithful_grids(sparse_logits, coords, B)
    margin = (score - SCORE_THR).abs().min().item()
    assert margin > tol.max(), f'a score {margin:.1e} from the threshold could flip within the tolerance'
    assert torch.equal(dense_occ_grids(logits, active, SCORE_THR, EMPTY), expected)
    assert (expected != EMPTY).sum() > 5 and (score <= SCORE_THR).sum() > 5, 'scores on both sides'


def test_the_dense_module_makes_no_tensor_from_host_values():
    """A tensor made from host values is a host-to-device copy on CUDA, which a graph capture refuses."""
    d = densifier(torch.float32)
    feats, points = inputs(torch.float32)
    with torch.no_grad(), HostTensorSpy() as spy:
        dense_occ_grids(*dense_cpd(d, feats, points), SCORE_THR, EMPTY)
    assert spy.count == 0


def test_the_dense_module_refuses_training_mode():
    d = densifier(torch.float64).train()
    with pytest.raises(ValueError, match='training mode'):
        dense_cpd(d, *inputs(torch.float64))


def test_which_grids_take_the_dense_module():
    assert fits_dense_cpd(OCC3D_NUSCENES.grid_shape)                    # 200 x 200 x 16
    assert not fits_dense_cpd(NUSCENES_OCCUPANCY.grid_shape)                # 512 x 512 x 40


def test_the_faithful_preset_swaps_the_v2_heads_and_graphs_the_static_test_step():
    """On the CPU the swapped head is the faithful head (the dense module acts on CUDA only); on Occ3D's grid its
    test step is static, so the accelerated detector replays it from a CUDA graph (eager on the CPU)."""
    model = tiny_detector()
    assert type(model.pts_bbox_head) is OPUSV2Head and FUSED_MODULES[OPUSV2Head] is DenseCPDOPUSV2Head
    reference = tiny_detector().eval()
    accelerate(model, policy_from_config(None)).eval()
    assert type(model.pts_bbox_head) is DenseCPDOPUSV2Head and model.pts_bbox_head.static_test_step
    assert isinstance(model.graphed_steps['offline_step'], GraphedFunction)
    got, expected = predict(model), predict(reference)
    assert len(expected['sem_pred']) > 0
    np.testing.assert_array_equal(got['occ_loc'], expected['occ_loc'])
    np.testing.assert_array_equal(got['sem_pred'], expected['sem_pred'])


def test_the_v2_training_decoder_is_graphed_and_the_cpd_modules_run_after_it():
    """The faithful preset graphs OPUS-V2's training decoder as V1's (not checkpointed inside the graph); the CPD
    modules take its outputs outside the graph. On the CPU the graphed function runs eagerly: the losses are the bare
    detector's, bit for bit (the graph against eager on CUDA: tests/engine/test_train_step.py)."""
    from accel.cuda_graph import GraphedTrainingFunction, without_dropout

    def losses(model):
        np.random.seed(0)                          # photometric distortion
        img, metas, sem, mask = tiny_batch(flip=True)
        return model(img=img, img_metas=metas, voxel_semantics=sem, mask_camera=mask)

    reference = without_dropout(tiny_detector()).train()
    model = without_dropout(accelerate(tiny_detector(), policy_from_config(None))).train()
    assert isinstance(model.graphed_steps['train_decoder'], GraphedTrainingFunction)
    layers = model.pts_bbox_head.transformer.decoder.decoder_layers
    assert all(layer.with_cp for layer in reference.pts_bbox_head.transformer.decoder.decoder_layers)
    assert not any(layer.with_cp for layer in layers)
    got, expected = losses(model), losses(reference)
    assert list(got) == list(expected) and len(got) == 5       # init points' term, then cls + pts of 2 layers
    for name in expected:
        assert torch.equal(got[name], expected[name]), name


def predict(model, device='cpu'):
    """The offline prediction of the tiny batch, with the last CPD bias raised from the prior (p = 0.01) to
    p ~ 0.25, so that the scores fall on both sides of the threshold."""
    with torch.no_grad():
        model.pts_bbox_head.densifiers[-1].cls_branch[2].bias.fill_(-1.1)
        img, metas, _, _ = tiny_batch(flip=False)
        model.online = False
        return model(img=[img.to(device)], img_metas=[metas], return_loss=False)[0]


@CUDA
def test_the_v2_test_step_on_cuda_is_captured_and_agrees_with_the_sparse_module():
    reference = tiny_detector().cuda().eval()
    model = accelerate(tiny_detector(), policy_from_config(None)).cuda().eval()
    expected = predict(reference, 'cuda')
    for _ in range(2):                                          # capture, then replay
        got = predict(model, 'cuda')
    graphs = model.graphed_steps['offline_step'].graphs
    assert len(graphs) == 1 and all(entry is not EAGER for entry in graphs.values())
    grid = np.full((2,) + tuple(OCC3D_NUSCENES.grid_shape), EMPTY)
    for i, result in enumerate((expected, got)):
        grid[i][tuple(result['occ_loc'].T)] = result['sem_pred']
    either = (grid != EMPTY).any(0)
    # float32 sums in another order move a score by ~1e-6 relative: only a score that close to the threshold
    # (or a tie between classes) flips, far fewer than 1 in 1000 of the voxels
    assert either.sum() > 50 and (grid[0][either] == grid[1][either]).mean() >= 0.999
