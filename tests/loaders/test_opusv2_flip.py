"""The OPUS-V2 ground-truth flip (RandomTransformOcc) and the occupancy-frame bookkeeping (ComposeEgo2Img):
the grids and ego2occ are flipped together, flipped GT with flipped predictions gives the same loss, and
flipped queries project to the same pixels through occ2img = ego2img @ inverse(ego2occ)."""
import numpy as np
import pytest
import torch
import torch.nn as nn
from mmcv.runner import BaseModule
from mmdet.models.utils.builder import TRANSFORMER

import loaders  # noqa: F401  (registers the pipeline steps)
import models  # noqa: F401
from camera_rig import pinhole_rig
from loaders.pipelines.opusv2_transforms import ComposeEgo2Img, RandomTransformOcc
from models.opusv2_head import OPUSV2DCDHead, OPUSV2Head
from models.opusv2_transformer import OPUSV2Transformer

PC_RANGE = [-40.0, -40.0, -1.0, 40.0, 40.0, 5.4]
GRID = (200, 200, 16)


def occ_results(seed=0):
    rng = np.random.RandomState(seed)
    sem = np.full(GRID, 17, np.uint8)
    sem[rng.rand(*GRID) < 0.002] = 4
    sem[120:130, 40:45, 2:4] = 7
    return dict(voxel_semantics=sem, mask_camera=rng.rand(*GRID) < 0.5, mask_lidar=rng.rand(*GRID) < 0.5)


def draws(seed):
    """What RandomTransformOcc draws from numpy's global RNG with default limits: rotate, scale, dx, dy."""
    np.random.seed(seed)
    rotate, scale = np.random.uniform(0.0, 0.0), np.random.uniform(1.0, 1.0)
    return rotate, scale, np.random.uniform() < 0.5, np.random.uniform() < 0.5


@pytest.mark.parametrize('seed', range(8))
def test_grids_and_ego2occ_are_flipped_together(seed):
    rotate, scale, flip_dx, flip_dy = draws(seed)
    after = np.random.rand()
    original = occ_results()
    prior = np.diag([1.0, 1.0, 1.0, 1.0])
    prior[:3, 3] = [0.5, -0.25, 0.0]   # ego2occ set by an earlier step is composed, not replaced
    results = dict({k: v.copy() for k, v in original.items()}, ego2occ=prior)
    np.random.seed(seed)
    out = RandomTransformOcc(dict(flip_dx_ratio=0.5, flip_dy_ratio=0.5))(results)
    assert np.random.rand() == after   # exactly four numbers drawn
    assert out['bda_aug'] == dict(rotate=0.0, scale=1.0, flip_dx=flip_dx, flip_dy=flip_dy)
    for key, grid in original.items():
        want = grid[::-1] if flip_dx else grid
        want = want[:, ::-1] if flip_dy else want
        assert np.array_equal(out[key], want) and out[key].flags['C_CONTIGUOUS'], key
    flip = np.diag([-1.0 if flip_dx else 1.0, -1.0 if flip_dy else 1.0, 1.0, 1.0])
    np.testing.assert_array_equal(out['ego2occ'], flip @ prior)


def test_flip_probabilities_and_unsupported_rotation():
    np.random.seed(0)
    step = RandomTransformOcc(dict(flip_dx_ratio=1.0, flip_dy_ratio=0.0))
    out = step(occ_results())
    assert out['bda_aug']['flip_dx'] and not out['bda_aug']['flip_dy']
    np.testing.assert_array_equal(out['ego2occ'], np.diag([-1.0, 1.0, 1.0, 1.0]))
    with pytest.raises(NotImplementedError, match='only flips'):
        RandomTransformOcc(dict(rot_lim=(-22.5, 22.5)))
    with pytest.raises(KeyError, match='unknown'):
        RandomTransformOcc(dict(flip_dz_ratio=0.5))


def test_compose_ego2img_is_lidar2img_times_ego2lidar():
    rng = np.random.RandomState(0)
    lidar2img = [rng.randn(4, 4).astype(np.float32) for _ in range(12)]
    ego2lidar = np.eye(4)
    ego2lidar[:3, 3] = [0.9, 0.0, -1.8]
    out = ComposeEgo2Img()(dict(lidar2img=lidar2img, ego2lidar=ego2lidar))
    assert len(out['ego2img']) == 12 and out['ego2img'][0].dtype == np.float32
    for got, m in zip(out['ego2img'], lidar2img):
        # the step stores this same float64 product in float32: <= half an ulp (rtol float32 eps)
        np.testing.assert_allclose(got, m.astype(np.float64) @ ego2lidar, rtol=float(np.finfo(np.float32).eps), atol=0)
    np.testing.assert_array_equal(out['ego2occ'], np.eye(4))
    kept = ComposeEgo2Img()(dict(lidar2img=lidar2img, ego2lidar=ego2lidar, ego2occ=2 * np.eye(4)))
    np.testing.assert_array_equal(kept['ego2occ'], 2 * np.eye(4))


# ---------------------------------------------------------------- the loss is invariant under the flip
@TRANSFORMER.register_module(name='V2FlipFakeTransformer', force=True)
class FakeTransformer(BaseModule):
    def __init__(self):
        super().__init__()
        self.num_layers, self.num_pt_channels = 2, 4
        self.lin = nn.Linear(3, 3)


def to_frame(points_n, bda):
    """Normalised points -> metres -> bda -> normalised."""
    lo, size = torch.tensor(PC_RANGE[:3]), torch.tensor(PC_RANGE[3:]) - torch.tensor(PC_RANGE[:3])
    metres = points_n.double() * size + lo
    moved = metres @ torch.from_numpy(bda[:3, :3]).t()
    return ((moved - lo) / size).float()


def flip_coors(coors, flip_dx, flip_dy):
    out = coors.clone()
    if flip_dx:
        out[:, 1] = GRID[0] - 1 - out[:, 1]
    if flip_dy:
        out[:, 2] = GRID[1] - 1 - out[:, 2]
    return out


@pytest.mark.parametrize('head_cls', [OPUSV2Head, OPUSV2DCDHead])
def test_flipped_gt_with_flipped_predictions_gives_the_same_loss(head_cls):
    head = head_cls(num_query=30, pc_range=PC_RANGE, voxel_size=[0.4] * 3, pfn_channels=[8, 8],
                    transformer=dict(type='V2FlipFakeTransformer'),
                    train_cfg=dict(cls_weights=[10, 5, 10, 5, 5, 10, 10, 5, 10, 5, 5, 1, 5, 1, 1, 2, 1]))
    base = occ_results(1)
    g = torch.Generator().manual_seed(2)
    # predictions around the occupied voxels (continuous positions: no nearest-neighbour ties)
    occupied = np.argwhere(base['voxel_semantics'] != 17)
    picks = occupied[np.random.RandomState(3).choice(len(occupied), 30)]
    centres = (torch.from_numpy(picks).double() + 0.5) / torch.tensor(GRID, dtype=torch.float64)
    points = [(centres[:, None] + 0.01 * torch.randn(30, p, 3, generator=g, dtype=torch.float64)).float()[None]
              for p in (4, 8)]
    coors = torch.cat([torch.zeros(60, 1, dtype=torch.long),
                       torch.from_numpy(np.concatenate([picks, picks + [1, 0, 0]])).long()], 1)
    logits = [torch.randn(60, 17, generator=g) for _ in range(2)]
    preds = dict(init_points=points[0][:, :, :1], all_refine_pts=points, all_cls_scores=logits,
                 all_voxel_coors=[coors, coors])

    def loss(results, preds):
        sem = torch.from_numpy(results['voxel_semantics'])[None]
        cam = torch.from_numpy(results['mask_camera'])[None]
        return head.loss(sem, cam, preds)

    reference = loss(base, preds)
    seen = set()
    for seed in range(32):   # until each of the four flip combinations was seen once
        np.random.seed(seed)
        flipped = RandomTransformOcc()({k: v.copy() for k, v in base.items()})
        aug = flipped['bda_aug']
        if (aug['flip_dx'], aug['flip_dy']) in seen:
            continue
        seen.add((aug['flip_dx'], aug['flip_dy']))
        bda = flipped['ego2occ']
        moved = dict(init_points=to_frame(preds['init_points'], bda),
                     all_refine_pts=[to_frame(p, bda) for p in points], all_cls_scores=logits,
                     all_voxel_coors=[flip_coors(c, aug['flip_dx'], aug['flip_dy']) for c in (coors, coors)])
        got = loss(flipped, moved)
        assert list(got) == list(reference)
        # The grids, labels and logits flip exactly; only point coordinates round differently: the flipped queries
        # (1 - x stored in float32) and voxel centres decode within ~1.6e-5 m of the mirrored ones, on Chamfer
        # distances of ~0.5 m (Lipschitz-1 SmoothL1 terms): <= 3e-5 relative per term, ~1e-6 averaged over the
        # ~1500 GT points whose roundings do not align; the float32 sums over reordered points add
        # <= log2(1500) x 2^-24 = 7e-7
        for key in reference:
            assert got[key].item() == pytest.approx(reference[key].item(), rel=1e-5), (seed, key)
    assert len(seen) == 4


def test_flipped_queries_project_to_the_same_pixels():
    tr = OPUSV2Transformer(embed_dims=32, num_frames=2, num_points=2, num_layers=1, num_levels=1, num_pt_channels=4,
                           num_refines=[2], pc_range=PC_RANGE, ffn_dims=64, mixing_out_points=4, with_cp=False)
    ego2img = pinhole_rig([0, 1], [0, -55, 55, 180, 110, -110], 64, 160, 80, 0.5).astype(np.float32)
    bda = np.diag([-1.0, -1.0, 1.0, 1.0])
    shape = [(64, 160, 3)] * 12
    flipped, _ = tr.image_geometry([dict(ego2img=list(ego2img), ego2occ=bda, img_shape=shape)], 'cpu')
    plain, _ = tr.image_geometry([dict(ego2img=list(ego2img), ego2occ=np.eye(4), img_shape=shape)], 'cpu')
    pts = torch.cat([torch.randn(50, 3) * 10, torch.ones(50, 1)], 1)
    a = torch.einsum('vij,nj->vni', plain[0].double(), pts.double())
    b = torch.einsum('vij,nj->vni', flipped[0].double(), pts.double() @ torch.from_numpy(bda).t())
    # inverse(diag(-1, -1, 1, 1)) and the products with it only flip signs (exact in float32 and float64), so both
    # sides sum the same products in the same order: equal bit for bit
    torch.testing.assert_close(a, b, rtol=0, atol=0)
