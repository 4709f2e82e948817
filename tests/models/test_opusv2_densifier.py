"""The CPD module (models/densifier.py) against a float64 re-computation written from the method
description: voxelisation with clamping, the 38-channel point input, the two VFE layers with their
per-voxel max, and the sparse conv stack as dense Conv3d on a zero-filled grid."""
import copy
import math

import torch
import torch.nn.functional as F

from models.densifier import Densifier, PFNLayer

# a small grid with 1 m voxels: 4 x 4 x 2 over [0, 4] x [0, 4] x [0, 2] metres
PC_RANGE = [0.0, 0.0, 0.0, 4.0, 4.0, 2.0]
GRID = (4, 4, 2)


def make_densifier(c_p=2, pfn=(6, 4), classes=3):
    torch.manual_seed(0)
    d = Densifier(c_p, pfn, classes, PC_RANGE, GRID).double()
    for bn in (d.pfn_layers[0].norm, d.pfn_layers[1].norm):   # non-trivial affine parameters
        bn.weight.data.uniform_(0.5, 1.5)
        bn.bias.data.uniform_(-0.5, 0.5)
    return d


def reference(d, feats, points):
    """Float64 CPD forward from the description, training-mode BatchNorm (biased variance) over each sample's
    own points (rows b*Q*P .. (b+1)*Q*P - 1)."""
    lo, hi = torch.tensor(PC_RANGE[:3], dtype=torch.float64), torch.tensor(PC_RANGE[3:], dtype=torch.float64)
    size = torch.tensor(GRID, dtype=torch.float64)
    B, Q, P, _ = points.shape
    p = points * (hi - lo) + lo
    loc = torch.floor((p - lo) / (hi - lo) * size)
    loc = torch.max(torch.min(loc, size - 1), torch.zeros(3, dtype=torch.float64))
    centre = (loc + 0.5) / size * (hi - lo) + lo
    rows, voxel_of = [], []
    for b in range(B):
        for q in range(Q):
            cq = p[b, q].mean(0)
            for k in range(P):
                rows.append(torch.cat([p[b, q, k] - centre[b, q, k], p[b, q, k] - cq, feats[b, q, k]]))
                voxel_of.append((b,) + tuple(int(v) for v in loc[b, q, k]))
    x = torch.stack(rows)
    voxels = sorted(set(voxel_of))
    members = {v: [i for i, u in enumerate(voxel_of) if u == v] for v in voxels}

    def bn(h, norm):
        out = []
        for rows in h.split(Q * P):
            mean, var = rows.mean(0), rows.var(0, unbiased=False)
            out.append((rows - mean) / torch.sqrt(var + norm.eps) * norm.weight + norm.bias)
        return torch.cat(out)

    pfn0, pfn1 = d.pfn_layers
    h = torch.relu(bn(x @ pfn0.linear.weight.t(), pfn0.norm))
    vmax = {v: h[members[v]].max(0).values for v in voxels}
    x = torch.cat([h, torch.stack([vmax[u] for u in voxel_of])], 1)
    h = torch.relu(bn(x @ pfn1.linear.weight.t(), pfn1.norm))
    voxel_feats = torch.stack([h[members[v]].max(0).values for v in voxels])
    # dense convs: scatter into [B, C, X, Y, Z], conv, keep the grown set, ReLU, conv
    conv, _, subm = d.cls_branch
    dense = torch.zeros((B, voxel_feats.shape[1]) + GRID, dtype=torch.float64)
    for v, f in zip(voxels, voxel_feats):
        dense[v[0], :, v[1], v[2], v[3]] = f
    occ = torch.zeros((B, 1) + GRID, dtype=torch.float64)
    for v in voxels:
        occ[v[0], 0, v[1], v[2], v[3]] = 1
    grown = F.max_pool3d(occ, 3, 1, 1) > 0
    y = F.conv3d(dense, conv.weight.permute(0, 4, 1, 2, 3), conv.bias, padding=1)
    y = torch.relu(y) * grown
    z = F.conv3d(y, subm.weight.permute(0, 4, 1, 2, 3), subm.bias, padding=1)
    sites = torch.nonzero(grown[:, 0])
    return z[sites[:, 0], :, sites[:, 1], sites[:, 2], sites[:, 3]], sites


def test_forward_matches_the_float64_reference():
    d = make_densifier()
    g = torch.Generator().manual_seed(1)
    B, Q, P = 2, 3, 4
    # points in [-0.2, 1.2] (normalised): some outside the range land in border voxels
    points = (torch.rand(B, Q, P, 3, generator=g, dtype=torch.float64) * 1.4 - 0.2).requires_grad_(True)
    feats = torch.randn(B, Q, P, 2, generator=g, dtype=torch.float64, requires_grad=True)
    d.train()
    logits, coords = d(feats, points)
    ref_logits, ref_coords = reference(d, feats, points)
    assert torch.equal(coords, ref_coords)
    # float64 in other summation orders: linears of 8 and 6 terms, batch-norm means and variances over each
    # sample's 12 rows (twice), two 3x3x3 convolutions of 27 * 4 + 1 terms: ~310 terms, 310 * 2^-52 ≈ 7e-14 of the
    # O(1) values along the chain; batch norm divides by the sample's std (>= 0.1 here, of values <= 1.7: x 17):
    # ~1.2e-12; 2e-12
    torch.testing.assert_close(logits, ref_logits, rtol=0, atol=2e-12)
    # gradients reach the point features and, through p - voxel centre and p - query centre, the points
    grad = torch.randn_like(logits)
    got = torch.autograd.grad(logits, (feats, points), grad)
    want = torch.autograd.grad(ref_logits, (feats, points), grad)
    # the backward pass sums as many terms again (transposed convolutions and linears, the batch-norm
    # backward's two row sums), with gradients up to ~1.3: twice the forward bound, 4e-12
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=0, atol=4e-12)
    assert got[1].abs().sum() > 0


def test_voxelisation_clamps_outside_points_into_border_voxels():
    d = Densifier(pc_range=[-40.0, -40.0, -1.0, 40.0, 40.0, 5.4], voxel_num=[200, 200, 16])
    pts = torch.tensor([[-40.0001, 0.1, 5.39], [100.0, -100.0, -5.0], [0.0, 39.999, -1.0],
                        [float('-3.4e38'), 3.4e38, 0.2]])
    loc, centre = d.voxelize(pts)
    assert loc.tolist() == [[0, 100, 15], [199, 0, 0], [100, 199, 0], [0, 199, 3]]
    want = (loc.float() + 0.5) / torch.tensor([200.0, 200.0, 16.0]) * torch.tensor([80.0, 80.0, 6.4]) + \
        torch.tensor([-40.0, -40.0, -1.0])
    assert torch.equal(centre, want)
    # (i + 0.5) / W * size + min in float32 is within 6.2e-6 m of exact (tests/models/test_ops_float32_details.py),
    # and the float32 references -39.8, 0.2, 5.2 within half an ulp of 40 (2^-19)
    torch.testing.assert_close(centre[0], torch.tensor([-39.8, 0.2, 5.2]), rtol=0, atol=6.2e-6 + 2.0 ** -19)


def test_batches_stay_apart_and_rows_are_sorted():
    d = make_densifier().eval()
    points = torch.full((2, 1, 2, 3), 0.3, dtype=torch.float64)   # the same voxel in both samples
    logits, coords = d(torch.zeros(2, 1, 2, 2, dtype=torch.float64), points)
    # voxel (1, 1, 0) grown by one voxel inside the 4 x 4 x 2 grid: 3 * 3 * 2 sites per sample
    assert (coords[:, 0] == 0).sum() == (coords[:, 0] == 1).sum() == 18
    from models.sparse_conv import linear_index
    lin = linear_index(coords, GRID)
    assert torch.equal(lin, lin.sort().values) and lin.unique().numel() == lin.numel()
    assert logits.shape == (coords.shape[0], 3)


def test_layout_and_init():
    d = Densifier()   # the official sizes
    shapes = {k: tuple(v.shape) for k, v in d.state_dict().items()}
    assert shapes == {
        'pc_range': (6,), 'voxel_num': (3,),
        'pfn_layers.0.linear.weight': (32, 38), 'pfn_layers.0.norm.weight': (32,), 'pfn_layers.0.norm.bias': (32,),
        'pfn_layers.0.norm.running_mean': (32,), 'pfn_layers.0.norm.running_var': (32,),
        'pfn_layers.0.norm.num_batches_tracked': (),
        'pfn_layers.1.linear.weight': (64, 64), 'pfn_layers.1.norm.weight': (64,), 'pfn_layers.1.norm.bias': (64,),
        'pfn_layers.1.norm.running_mean': (64,), 'pfn_layers.1.norm.running_var': (64,),
        'pfn_layers.1.norm.num_batches_tracked': (),
        'cls_branch.0.weight': (64, 3, 3, 3, 64), 'cls_branch.0.bias': (64,),
        'cls_branch.2.weight': (17, 3, 3, 3, 64), 'cls_branch.2.bias': (17,)}
    assert sum(p.numel() for p in d.parameters()) == 145_553
    assert d.voxel_num.dtype == torch.long and d.pc_range.dtype == torch.float32
    norm = d.pfn_layers[0].norm
    assert (norm.eps, norm.momentum) == (1e-3, 0.01)
    d.init_weights()
    assert torch.equal(d.cls_branch[2].bias, torch.full((17,), -math.log(0.99 / 0.01)))


def test_pfn_layer_halves_a_non_last_layer():
    layer = PFNLayer(5, 8, last_layer=False).double().eval()
    x = torch.randn(6, 5, dtype=torch.float64)
    inverse = torch.tensor([0, 1, 0, 2, 1, 0])
    out = layer(x, inverse, 3)
    h = torch.relu(layer.norm(x @ layer.linear.weight.t()))
    assert layer.linear.bias is None and out.shape == (6, 8)
    # the same float64 operations (a bias-free linear is this matrix product; the maximum is exact): equal
    assert torch.equal(out[:, :4], h)
    assert torch.equal(out[:, 4:], torch.stack([h[inverse == u].max(0).values for u in inverse.tolist()]))


def test_batch_norm_statistics_are_per_sample():
    """In training each sample's points are normalised by their own statistics (as one sample per GPU), the
    running statistics move by the mean of the samples' statistics; in eval mode the running ones serve all."""
    layer = PFNLayer(5, 4, last_layer=True).double().train()
    with torch.no_grad():
        layer.norm.weight.uniform_(0.5, 1.5)
        layer.norm.bias.uniform_(-0.5, 0.5)
    # two one-sample layers in the state before the two-sample call
    one = [copy.deepcopy(layer) for _ in range(2)]
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2 * 7, 5, generator=g, dtype=torch.float64)
    x[7:] = x[7:] * 3 + 2                                      # the second sample: other statistics
    h = x @ layer.linear.weight.t()
    both = layer.normalise(h, 2)
    outs = [one[k].normalise(h[7 * k:7 * (k + 1)], 1) for k in range(2)]
    # the same F.batch_norm on the same rows: bitwise equal
    assert torch.equal(both, torch.cat(outs))
    # running statistics: (1 - m) r + m * mean over samples of (mean, unbiased variance) is the mean of the two
    # one-sample updates (linear in the statistics); a few float64 roundings of values <= ~10: 1e-14 relative
    for name in ('running_mean', 'running_var'):
        want = (getattr(one[0].norm, name) + getattr(one[1].norm, name)) / 2
        torch.testing.assert_close(getattr(layer.norm, name), want, rtol=1e-14, atol=0)
    assert int(layer.norm.num_batches_tracked) == 1
    # pooled statistics would be a different function: far beyond the comparison above
    pooled = F.batch_norm(h, None, None, layer.norm.weight, layer.norm.bias, True, 0.0, layer.norm.eps)
    assert (pooled - both).abs().max() > 0.1
    # eval mode: the running statistics for every point, the same with any sample count
    layer.eval()
    assert torch.equal(layer.normalise(h, 2), layer.norm(h))
