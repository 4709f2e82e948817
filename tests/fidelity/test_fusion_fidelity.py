"""OPUS-Fusion-T against the authors' code (github.com/w1394945493/OPUS at 216dc53 + mmdetection3d v1.0.0rc6),
imported at run time (tests/fidelity/authors_code.py; run: docs/method.md, "Fidelity against the authors' code").

Both detectors are built from their configs (the authors'
`opusv1-fusion-t_r50_704x256_8f_nusc-occ3d_100e.py` through mmdet3d's `build_model`, ours
`configs/opus-fusion-t_r50_704x256_8f_100e.py`); every parameter and BatchNorm statistic of the authors' model is
randomised (their init zeroes the mixing generators and the sampling offsets, which would hide those paths), and
their state dict is loaded into ours with `strict=True` (all 838 keys; the sparse kernels moved from mmcv's layout
to spconv 2's, `authors_code.to_our_state_dict`). Both run in eval mode (no dropout, BatchNorm with its statistics)
on the same inputs:

* a rig of T = 8 frames of pinhole views of 64 x 176 pixels (`camera_rig.pinhole_rig`), random FPN features at
  strides 4..32 (the image backbone is V1's and not part of this check). The decoder and loss checks use the
  config's head with N = 5 views (fixture `heads`: the authors' CPU sampling reads the views exactly only when
  N - 1 is a power of two); the nuScenes N = 6 is checked on layer 0 with the bound of its view rounding;
* two samples of LiDAR points: 1,000 random points in and just outside the range (half of them time lag 0) and
  the real nuScenes scan of ../shared/data (34,688 points, time lag 0; random points again when it is absent);
* the decoder reads a random BEV map (so that the decoder check does not hang on the LiDAR branch's result);
* ground truth: a road, a car and a pedestrian on the 200 x 200 x 16 grid, camera mask over part of it.

Compared: voxels, per-voxel point counts and coordinates (exact), the mean voxel features, the sparse encoder's
output densified `[B, 256, 200, 200]`, SECOND's two stages, SECONDFPN and `final_conv`; the initial query points
of `init_pos_lidar='curr'` (exact); per decoder layer the sampled image features, the sampled BEV features, the
class logits and the refined points (float64 and float32); every one of the 12 loss terms (float32, per sample
and for the batch).

Tolerances (the reason beside each): float64 runs agree to 1e-10 of the compared values' scale, the rounding of
float64 (1.1e-16) through the few hundred operations between the inputs and any compared value, with margin;
float32 bounds are stated where they are used.

Not compared, and why: the CUDA kernels themselves. The authors' path needs mmcv's CUDA ops for furthest-point
sampling, gathering, kNN, the non-deterministic voxelisation and the sparse-convolution rulebooks; they are
replaced by CPU equivalents (authors_code.py, each documented there), so what is checked is everything around
them plus the equivalents' reading of the kernels. The training-time fp16 autocast, the image backbone and the
GPU sampling kernel (`msmv_sampling` CUDA) are not run; the authors' pure-PyTorch `msmv_sampling_pytorch` is.
"""
import copy
import logging
import math
import os.path as osp

import numpy as np
import pytest
import torch

from authors_code import authors_registry, to_our_state_dict
from camera_rig import pinhole_rig
from real_data import KEYFRAME_DIR

logging.getLogger('mmcv').setLevel(logging.WARNING)   # init_weights logs one line per parameter

OUR_CONFIG = osp.join(osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))), 'configs',
                      'opus-fusion-t_r50_704x256_8f_100e.py')
PC_RANGE = [-40.0, -40.0, -1.0, 40.0, 40.0, 5.4]
T, H, W = 8, 64, 176
LIDAR_MODULES = ('pts_voxel_encoder', 'pts_middle_encoder', 'pts_backbone', 'pts_neck', 'final_conv')
REAL_SCAN = osp.join(KEYFRAME_DIR, 'n015-2018-07-24-11-22-45+0800__LIDAR_TOP__1532402927647951.pcd.bin')

# float64 rounding (unit roundoff 1.1e-16) through the few hundred operations before any compared value: relative
# errors of 1e-13 at most; 1e-10 of the value's scale leaves three orders of margin
F64_REL = 1e-10


def assert_close(ours, theirs, rel, what):
    """max |ours - theirs| <= rel * max |theirs| (the value's scale), naming `what` and the two numbers."""
    ours, theirs = torch.as_tensor(ours), torch.as_tensor(theirs)
    assert ours.shape == theirs.shape, f'{what}: shape {tuple(ours.shape)} vs the authors\' {tuple(theirs.shape)}'
    scale = theirs.abs().max().item() if theirs.numel() else 0.0
    err = (ours.double() - theirs.double()).abs().max().item() if theirs.numel() else 0.0
    assert err <= rel * max(scale, 1e-30), f'{what}: max difference {err:.3e} > {rel:g} x scale {scale:.3e}'


# ---------------------------------------------------------------------------------------------- the two models
def randomise(model, seed):
    """Every floating parameter and BatchNorm statistic of `model` drawn at random (weights ~ N(0, 1/fan_in), scales
    1 + 0.1 N, biases 0.1 N, running means 0.1 N, variances U(0.5, 1.5)), so no path is switched off by its init."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=gen, dtype=param.dtype)
            if param.dim() >= 2:
                fan_in = param[0].numel() if 'pts_middle_encoder' not in name else param.shape[:-1].numel()
                param.copy_(noise / fan_in ** 0.5)
            elif name.endswith('weight'):
                param.copy_(1 + 0.1 * noise)
            else:
                param.copy_(0.1 * noise)
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.running_mean.copy_(0.1 * torch.randn(module.num_features, generator=gen))
                module.running_var.copy_(0.5 + torch.rand(module.num_features, generator=gen))


@pytest.fixture(scope='module')
def models(reference):
    """(the authors' OPUSV1Fusion, ours) with the same random weights, eval mode, float32."""
    from mmcv import Config
    from mmdet.models import build_detector
    with authors_registry():
        theirs = reference.build_model(copy.deepcopy(Config.fromfile(reference.config_file).model))
    # mmcv's deterministic=False voxelisation is CUDA-only; its CPU kernel (deterministic: voxels in the order of
    # their first point, points in input order) is the outcome ours reproduces (docs/method.md, the voxel quirk)
    theirs.pts_voxel_layer.deterministic = True
    randomise(theirs, seed=0)
    ours = build_detector(copy.deepcopy(Config.fromfile(OUR_CONFIG).model))
    state = theirs.state_dict()
    sparse = {key for key, value in state.items() if key.startswith('pts_middle_encoder.') and value.dim() == 5}
    result = ours.load_state_dict(to_our_state_dict(state, sparse), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    return theirs.eval(), ours.eval()


@pytest.fixture(scope='module', params=[5], ids=['5views'])
def heads(request, reference):
    """(the authors' OPUSV1FusionHead, ours) of Fusion-T built from the two configs' head settings with
    `num_views` = request.param (the decoder's weights do not depend on it), the same random weights, eval mode.

    Five views: the authors' CPU sampling (`msmv_sampling_pytorch`) addresses the view axis of a 5D grid_sample by
    the coordinate `i / (N - 1)` computed in float32, which is exact for N - 1 = 4 but not for nuScenes' N - 1 = 5
    (`test_layer0_image_samples_six_views`); with N = 5 the float64 runs are float64 throughout."""
    from mmcv import Config
    from mmdet.models import build_head
    from mmdet3d.models.builder import build_head as build_their_head

    def head_cfg(model_cfg):
        head = copy.deepcopy(model_cfg.pts_bbox_head)
        head.transformer.num_views = request.param
        head.update(train_cfg=model_cfg.train_cfg.pts, test_cfg=model_cfg.test_cfg.pts)
        return head

    with authors_registry():
        theirs = build_their_head(head_cfg(Config.fromfile(reference.config_file).model))
    randomise(theirs, seed=1)
    ours = build_head(head_cfg(Config.fromfile(OUR_CONFIG).model))
    ours.load_state_dict(theirs.state_dict(), strict=True)
    return theirs.eval(), ours.eval()


def test_state_dicts_have_one_layout(models):
    theirs, ours = models
    their_state, our_state = theirs.state_dict(), ours.state_dict()
    assert sorted(their_state) == sorted(our_state) and len(our_state) == 838
    for key, value in their_state.items():
        expected = value.permute(4, 0, 1, 2, 3).shape if value.dim() == 5 else value.shape
        assert our_state[key].shape == expected, key


# ---------------------------------------------------------------------------------------------- inputs
def random_points(seed, n):
    """`[n, 5]` float32: x, y, z over the range widened by 1% on each side (some points fall outside), intensity,
    time lag (0 for even rows, else 0.05 s)."""
    rng = np.random.default_rng(seed)
    lo, hi = np.asarray(PC_RANGE[:3]), np.asarray(PC_RANGE[3:])
    xyz = lo - 0.01 * (hi - lo) + 1.02 * (hi - lo) * rng.random((n, 3))
    lag = np.where(np.arange(n) % 2 == 0, 0.0, 0.05)
    return torch.from_numpy(np.concatenate([xyz, 100 * rng.random((n, 1)), lag[:, None]], 1).astype(np.float32))


@pytest.fixture(scope='module')
def points():
    """Two samples: 1,000 random points; the real scan (all time lag 0), or 20,000 random points without it."""
    if osp.isfile(REAL_SCAN):
        scan = torch.from_numpy(np.fromfile(REAL_SCAN, dtype=np.float32).reshape(-1, 5).copy())
        scan[:, 4] = 0          # the file's ring index column -> time lag 0 (the key sweep)
    else:
        scan = random_points(1, 20000)
    return [random_points(0, 1000), scan]


YAWS = {5: [0, 72, 144, -144, -72], 6: [0, -55, 55, 180, 110, -110]}


def metas(exact_geometry, views=6):
    """B = 2 metas: T*N `ego2img` of a pinhole rig of `views` cameras per frame; `ego2occ` and the points' frame:
    with `exact_geometry`, a 90-degree turn about z (ego2occ) and a turn plus an integer shift (ego2points = the
    authors' `ego2lidar`), whose float32 products and inverse are exact (float64 runs would otherwise differ by the
    geometry's float32 rounding, which both code bases apply); else the identities of Occ3D."""
    ego2img = list(pinhole_rig(range(T), YAWS[views], H, W, W / 2, 0.5).astype(np.float32))
    ego2occ, ego2points = np.eye(4), np.eye(4)
    if exact_geometry:
        ego2occ = np.array([[0, -1, 0, 0], [1, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], float)
        ego2points = np.array([[0, 1, 0, 2], [-1, 0, 0, -3], [0, 0, 1, 1], [0, 0, 0, 1]], float)
    meta = dict(ego2img=ego2img, ego2occ=ego2occ, ego2points=ego2points, ego2lidar=ego2points,
                img_shape=[(H, W, 3)] * (T * views))
    return [copy.deepcopy(meta) for _ in range(2)]


def image_features(dtype, views=6, seed=2):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(2, T * views, 256, H // s, -(-W // s), generator=gen, dtype=torch.float64).to(dtype)
            for s in (4, 8, 16, 32)]


def bev_map(dtype, seed=3):
    return torch.randn(2, 256, 200, 200, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)


def ground_truth():
    sem = np.full((2, 200, 200, 16), 17, np.uint8)
    sem[:, 80:120, 80:120, 1] = 11          # road
    sem[:, 105:110, 98:103, 2:4] = 4        # a car
    sem[1, 95:100, 110:112, 3:6] = 7        # a pedestrian in sample 1
    mask = np.zeros((2, 200, 200, 16), bool)
    mask[:, 90:130] = True
    return torch.from_numpy(sem), torch.from_numpy(mask)


# ---------------------------------------------------------------------------------------------- LiDAR branch
def lidar_stages(model, points, ours):
    """The branch stage by stage: voxels, counts, coords, voxel features, the sparse encoder's dense map; each
    model runs its own chain (the authors' modules take their voxels, ours ours)."""
    voxels, counts, coords = model.voxelize(points)
    dtype = next(model.pts_middle_encoder.parameters()).dtype
    features = model.pts_voxel_encoder(voxels.to(dtype), counts, coords)
    encoded = model.pts_middle_encoder(features, coords, len(points))
    return dict(voxels=voxels, counts=counts, coords=coords, features=features, encoded=encoded)


def lidar_in(models, dtype):
    for model in models:
        for name in LIDAR_MODULES:
            getattr(model, name).to(dtype)


@torch.no_grad()
def test_lidar_branch(models, points):
    theirs, ours = models
    try:
        lidar_in(models, torch.float64)
        ref64, got64 = lidar_stages(theirs, points, False), lidar_stages(ours, points, True)
        lidar_in(models, torch.float32)
        ref32, got32 = lidar_stages(theirs, points, False), lidar_stages(ours, points, True)
    finally:
        lidar_in(models, torch.float32)
    # mmcv's CPU hard voxelisation and ours: the same voxels, points and coordinates, bit for bit
    for key in ('voxels', 'counts', 'coords'):
        assert torch.equal(got64[key], ref64[key]), key
    assert ref64['voxels'].shape[0] > 7000                     # both samples voxelised (the real scan: ~7,200)
    assert_close(got64['features'], ref64['features'], F64_REL, 'mean voxel features (float64)')
    assert_close(got64['encoded'], ref64['encoded'], F64_REL, 'sparse encoder, densified (float64)')
    assert ref64['encoded'].shape == (2, 256, 200, 200) and (ref64['encoded'] != 0).any()
    # float32: the same sums in other orders (the stand-in adds tap by tap, ours one GEMM over the 27 taps). A
    # float32 dot product of n terms is off by ~sqrt(n) x 2^-24 of its scale (rounding errors as a random walk);
    # n <= 27 x 128 taps x channels, 21 sparse convolutions in a row (BatchNorm and ReLU keep the scale), on each
    # side: 2 x 21 x sqrt(3456) x 2^-24 = 1.5e-4 of the map's scale
    rel32 = 2 * 21 * math.sqrt(27 * 128) * 2 ** -24
    assert_close(got32['encoded'], ref32['encoded'], rel32, 'sparse encoder, densified (float32)')
    # SECOND, SECONDFPN and final_conv are the same torch layers with the same weights in both code bases: on the
    # same input (the authors' encoder output) the same bits
    x = ref32['encoded']
    their_stages, our_stages = theirs.pts_backbone(x), ours.pts_backbone(x)
    for i, (got, ref) in enumerate(zip(our_stages, their_stages)):
        assert torch.equal(got, ref), f'SECOND stage {i}'
    their_neck, our_neck = theirs.pts_neck(their_stages), ours.pts_neck(their_stages)
    assert torch.equal(our_neck[0], their_neck[0]) and our_neck[0].shape == (2, 512, 200, 200)
    assert torch.equal(ours.final_conv(their_neck[0]), theirs.final_conv(their_neck[0]))


# ---------------------------------------------------------------------------------------------- head
def test_initial_points_curr(models, points):
    """`init_pos_lidar='curr'`: the time-lag-0 points, furthest-point sampled, normalised: the same coordinates
    (both pick by the same float32 distances; the indices may differ between coincident points only)."""
    theirs, ours = models
    feats = image_features(torch.float32)
    their_init, _ = theirs.pts_bbox_head.get_init_position(points, feats, None, metas(False))
    our_init = ours.pts_bbox_head.initial_points(points)
    assert their_init.shape == (2, 600, 1, 3)
    assert torch.equal(our_init, their_init)
    lag0 = points[0][points[0][:, 4] == 0, :3]
    decoded = their_init[0, :, 0] * torch.tensor([80.0, 80.0, 6.4]) + torch.tensor(PC_RANGE[:3])
    # every chosen point is a time-lag-0 point (up to the encode/decode rounding, far below the 1e-3 m checked)
    assert torch.cdist(decoded.double(), lag0.double()).min(dim=1).values.max() < 1e-3


class Recorder:
    """Forward hooks on every decoder layer and its sampling module: per layer (image samples, BEV samples, class
    logits, refined points)."""

    def __init__(self, head):
        self.layers = []
        self.handles = []
        for layer in head.transformer.decoder.decoder_layers:
            entry = {}
            self.layers.append(entry)
            self.handles.append(layer.sampling.register_forward_hook(
                lambda m, a, out, e=entry: e.update(image=out[0], bev=out[1])))
            self.handles.append(layer.register_forward_hook(
                lambda m, a, out, e=entry: e.update(cls=out[1], points=out[2])))

    def remove(self):
        for handle in self.handles:
            handle.remove()


@torch.no_grad()
def run_heads(heads, points, dtype, exact_geometry):
    """Both heads on the same FPN features, BEV map and points: (their outputs, ours, their layers, our layers)."""
    views = heads[0].transformer.decoder.num_views
    feats, bev = image_features(dtype, views), bev_map(dtype)
    # the heads take the points' dtype for their initial points (float64: the sampling's distances in float64)
    points = [p.to(dtype) for p in points]
    recorders = [Recorder(head) for head in heads]
    default_dtype = torch.get_default_dtype()
    try:
        for head in heads:
            head.to(dtype)
        # the authors' CPU sampling (`msmv_sampling_pytorch`) allocates its accumulator with torch.zeros(...) in the
        # default dtype: float64 runs make that float64 (else their image samples would be rounded to float32)
        torch.set_default_dtype(dtype)
        # the authors' transformer regroups the list of levels in place: each head gets its own list
        their_out = heads[0](mlvl_feats=list(feats), pts_feats=bev, points=points,
                             img_metas=metas(exact_geometry, views))
        our_out = heads[1](list(feats), bev, points, metas(exact_geometry, views))
    finally:
        torch.set_default_dtype(default_dtype)
        for head, recorder in zip(heads, recorders):
            head.float()
            recorder.remove()
    return their_out, our_out, recorders[0].layers, recorders[1].layers


LAYER_KEYS = ('image', 'bev', 'cls', 'points')


@pytest.fixture(scope='module')
def head_runs(heads, points):
    """run_heads of the five-view heads, by (dtype, exact_geometry), each computed once."""
    cache = {}

    def run(dtype, exact_geometry):
        if (dtype, exact_geometry) not in cache:
            cache[dtype, exact_geometry] = run_heads(heads, points, dtype, exact_geometry)
        return cache[dtype, exact_geometry]
    return run


def test_decoder_layers_float64(head_runs):
    their_out, our_out, their_layers, our_layers = head_runs(torch.float64, exact_geometry=True)
    assert len(their_layers) == len(our_layers) == 6
    for i, (ref, got) in enumerate(zip(their_layers, our_layers)):
        for key in LAYER_KEYS:
            assert_close(got[key], ref[key], F64_REL, f'layer {i} {key} (float64)')
    assert their_layers[0]['bev'].shape == (2, 600, 4, 4, 64) and their_layers[0]['image'].shape == (2, 600, 4, 32, 64)
    assert their_layers[-1]['points'].shape == (2, 600, 128, 3)
    # the BEV samples are not all zero: most sampling points fall inside the map
    assert (their_layers[0]['bev'] != 0).float().mean() > 0.5
    for key in ('all_cls_scores', 'all_refine_pts'):
        for i, (got, ref) in enumerate(zip(our_out[key], their_out[key])):
            assert_close(got, ref, F64_REL, f'{key}[{i}] (float64)')


def test_decoder_layers_float32(head_runs):
    """float32 on the Occ3D geometry (identities). Bound: both code bases evaluate the same float32 arithmetic in
    other orders (the image sampling: the authors' 5D grid_sample over views, whose view coordinate i / (N - 1) * 2 - 1
    rounds and leaks a 1e-7 share of the neighbour view, ours a gather of the chosen view; the pixel coordinates
    are scaled in other orders), so ours may differ from theirs by their own float32 error against their float64
    run, twice (one per side), doubled as margin; the error grows through the layers as the points move, and the
    float64 run measures that growth for the same inputs."""
    _, _, ref_layers32, got_layers32 = head_runs(torch.float32, exact_geometry=False)
    _, _, ref_layers64, _ = head_runs(torch.float64, exact_geometry=False)
    for i, (ref, got, ref64) in enumerate(zip(ref_layers32, got_layers32, ref_layers64)):
        for key in LAYER_KEYS:
            own_error = (ref[key].double() - ref64[key]).abs().max().item()
            bound = 4 * own_error + 2 ** -24 * ref64[key].abs().max().item()
            err = (got[key].double() - ref[key].double()).abs().max().item()
            assert err <= bound, f'layer {i} {key} (float32): {err:.3e} > {bound:.3e}'


def per_sample(outputs, b):
    """The head outputs of sample b alone (a batch of one)."""
    return {key: value[b:b + 1] if torch.is_tensor(value) else [v[b:b + 1] for v in value]
            for key, value in outputs.items()}


def test_losses(heads, head_runs):
    """Every loss term (init_pos_lidar='curr': no initial-points term, 12 entries), both heads on the same
    predictions (the authors'), float32.

    float32 because the authors' loss computes in float32 whatever the predictions' dtype: the ground-truth centres
    (`arange(dtype=float32)` scaled by 0-dim range tensors, which do not promote it) and the distance normaliser
    (`sqrt(80^2 + 80^2)` from float32 buffers); a float64 run would compare those roundings, not the method. Bound:
    each term is a float32 sum of n >= 0 summands (n <= 17 x 76,800 logits), which torch adds by cascade
    summation with relative error <= ceil(log2 n) x 2^-24, on each side.

    Per sample (a batch of one): the authors divide by the point counts of the whole batch, ours per sample and
    then averages (docs/method.md, "Losses", a deliberate deviation; the same with the authors' one sample per GPU).
    For the batch of two, ours equals the mean of the authors' one-sample terms."""
    theirs, ours = heads
    outputs = head_runs(torch.float32, exact_geometry=False)[0]
    sem, mask = ground_truth()
    rel = 2 * math.ceil(math.log2(17 * 600 * 128)) * 2 ** -24
    refs = []
    for b in range(2):
        ref = theirs.loss(sem[b:b + 1], mask[b:b + 1], per_sample(outputs, b))
        got = ours.loss(sem[b:b + 1], mask[b:b + 1], per_sample(outputs, b))
        assert list(got) == list(ref) and len(ref) == 12
        for key, value in ref.items():
            assert value.item() > 0, key
            assert_close(got[key], value, rel, f'sample {b} loss {key} (float32)')
        refs.append(ref)
    got = ours.loss(sem, mask, copy.copy(outputs))
    for key in refs[0]:
        assert_close(got[key], (refs[0][key] + refs[1][key]) / 2, rel, f'batch of two, loss {key} (float32)')


def test_layer0_image_samples_six_views(models, points):
    """Six views (nuScenes), layer 0, float64, the same inputs on both sides: the authors' CPU sampling reads view i
    at the grid coordinate float32(i / 5) * 5 = i + e with |e| <= 5 * 2^-25 (float32 rounding of a quotient in
    [0.2, 1]), so its trilinear read mixes a share |e| of the neighbouring view (feature difference <= 2 max|f|)
    into every sample; ours reads the chosen view alone (the authors' CUDA kernel's reading). Bound: that share
    times 2 max|f| (the level weights sum to 1), plus the float64 bound."""
    theirs, ours = models
    _, _, ref_layers, got_layers = run_heads((theirs.pts_bbox_head, ours.pts_bbox_head), points, torch.float64,
                                             exact_geometry=True)
    max_feature = max(level.abs().max().item() for level in image_features(torch.float64, 6))
    bound = 5 * 2 ** -25 * 2 * max_feature
    ref, got = ref_layers[0]['image'], got_layers[0]['image']
    err = (got - ref).abs().max().item()
    assert err <= bound + F64_REL * ref.abs().max().item(), f'layer 0 image samples: {err:.3e} > {bound:.3e}'
    assert_close(got_layers[0]['bev'], ref_layers[0]['bev'], F64_REL, 'layer 0 BEV samples (six views, float64)')
