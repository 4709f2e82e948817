"""The real Occ3D-nuScenes grid of ../shared/data/occ3d-sample through mIoU, RayIoU, the loss's ground-truth
points and the bird's-eye picture, each against an independent numpy computation (counts, per-column /
per-row first hits, float64 voxel centres, a per-layer loop)."""
import numpy as np
import pytest
import torch

from evaluation.miou import OccMIoU
from evaluation.ray_iou import RayIoU
from tools import visualize as vis

FREE = 17
PC_MIN = np.array([-40.0, -40.0, -1.0])
VOXEL = 0.4
PRESENT = {0, 1, 3, 4, 6, 11, 13, 14, 15, 16, 17}  # the README's list


def test_grid_is_what_the_readme_says(real_occ3d):
    sem = real_occ3d['semantics']
    assert sem.shape == (200, 200, 16) and sem.dtype == np.uint8
    assert set(np.unique(sem).tolist()) == PRESENT
    assert int((sem != FREE).sum()) == 39092
    assert int(real_occ3d['mask_camera'].sum()) == 43355 and int(real_occ3d['mask_lidar'].sum()) == 56601


# ---------------------------------------------------------------------------------- mIoU
def miou_by_counts(pred, gt, mask):
    """Per-class IoU 0..16 from voxel counts (NaN for a class without ground truth in the mask), mIoU %."""
    ious = []
    for c in range(17):
        g, p = (gt == c) & mask, (pred == c) & mask
        if not g.any():
            ious.append(np.nan)
            continue
        ious.append(np.count_nonzero(g & p) / np.count_nonzero(g | p))
    ious = np.array(ious)
    return ious, round(float(np.nanmean(ious)) * 100, 2)


def test_miou_of_the_ground_truth_itself_is_100(real_occ3d):
    sem, mask = real_occ3d['semantics'], real_occ3d['mask_camera']
    metric = OccMIoU()
    metric.add_batch(sem, sem, mask)
    ious = metric.per_class_iou()[:17]
    visible = {c for c in range(17) if ((sem == c) & mask).any()}
    assert visible and visible <= PRESENT
    assert metric.miou() == 100.0
    for c in range(17):
        assert (ious[c] == 1.0) if c in visible else np.isnan(ious[c]), c


def corrupted(sem, mask):
    """A hand-built wrong prediction: half of the cars become trucks, the upper vegetation vanishes,
    some sidewalk becomes terrain, and a block of visible free space in front of the car becomes 'others'."""
    pred = sem.copy()
    x = np.arange(200)[:, None, None]
    y = np.arange(200)[None, :, None]
    z = np.arange(16)[None, None, :]
    pred[(sem == 4) & (x % 2 == 0)] = 10
    pred[(sem == 16) & (z >= 6)] = FREE
    pred[(sem == 13) & (y < 100)] = 14
    block = (x >= 100) & (x < 115) & (y >= 95) & (y < 105) & (z >= 2) & (z < 6)
    pred[block & (sem == FREE) & mask] = 0
    return pred


def test_miou_of_a_corruption_matches_voxel_counts(real_occ3d):
    sem, mask = real_occ3d['semantics'], real_occ3d['mask_camera']
    pred = corrupted(sem, mask)
    ref, ref_miou = miou_by_counts(pred, sem, mask)
    metric = OccMIoU()
    metric.add_batch(pred, sem, mask)
    # the same integer counts (union = GT + pred - TP exactly) divided once in float64: equal bit for bit
    np.testing.assert_array_equal(metric.per_class_iou()[:17], ref)
    assert metric.miou() == ref_miou
    # the classes that must be hurt are, the others are untouched
    hurt = {0, 4, 13, 14, 16}
    for c in range(17):
        if np.isnan(ref[c]):
            continue
        assert (ref[c] < 1.0) if c in hurt else (ref[c] == 1.0), (c, ref[c])
    # car: exactly the odd-x cars survive (nothing else is predicted as car)
    car = (sem == 4) & mask
    assert ref[4] == np.count_nonzero(car[1::2]) / np.count_nonzero(car)  # the same two integers divided: exact
    assert np.isnan(ref[10])  # trucks are predicted but absent from the GT: not in the mean
    print(f'\nmIoU of the corruption: {ref_miou} (per class {np.round(ref * 100, 2).tolist()})')


# ---------------------------------------------------------------------------------- RayIoU
def first_hits_down(grid):
    """Rays straight down from the top voxel centre of every column: (label, depth m) per column (x-major)."""
    occ = grid != FREE
    k = 15 - np.argmax(occ[:, :, ::-1], axis=2)         # highest occupied layer
    hit = occ.any(axis=2)
    label = np.where(hit, np.take_along_axis(grid, k[..., None], 2)[..., 0], FREE)
    # the ray starts at z-index 15.5 and leaves voxel k through its bottom face (index k); no hit: leaves voxel 0
    depth = np.where(hit, 15.5 - k, 15.5) * VOXEL
    return label.reshape(-1), depth.reshape(-1)


def first_hits_along_x(grid):
    """Rays along +x from the centre of voxel (0, j, k) for every (j, k): (label, depth m), j-major."""
    occ = grid != FREE
    i = np.argmax(occ, axis=0)
    hit = occ.any(axis=0)
    label = np.where(hit, np.take_along_axis(grid, i[None], 0)[0], FREE)
    depth = np.where(hit, i + 0.5, 199.5) * VOXEL
    return label.reshape(-1), depth.reshape(-1)


def ray_iou_by_counts(pred_label, gt_label, pred_depth, gt_depth, thresholds=(1, 2, 4)):
    """[3, 17] IoU per threshold and class from per-ray labels and depths (rays without a GT hit dropped)."""
    valid = gt_label != FREE
    pl, gl, err = pred_label[valid], gt_label[valid], np.abs(pred_depth[valid] - gt_depth[valid])
    out = np.full((len(thresholds), 17), np.nan)
    for j, tau in enumerate(thresholds):
        for c in range(17):
            tp = np.count_nonzero((pl == c) & (gl == c) & (err < tau))
            denom = np.count_nonzero(gl == c) + np.count_nonzero(pl == c) - tp
            if denom:
                out[j, c] = tp / denom
    return out


def shifted_down(sem, columns_x_below=100, layers=3):
    """Prediction = GT moved down by `layers` voxels in the columns with x index < columns_x_below,
    with the vegetation removed everywhere."""
    pred = sem.copy()
    pred[:columns_x_below, :, :-layers] = sem[:columns_x_below, :, layers:]
    pred[:columns_x_below, :, -layers:] = FREE
    pred[pred == 16] = FREE
    return pred


@pytest.mark.parametrize('direction', ['down', 'x'])
def test_rayiou_against_per_column_first_hits(real_occ3d, direction):
    """Axis-aligned rays from voxel centres: the first hit along a column (row) and its exit depth are
    numpy one-liners, so the caster's labels and depths and the RayIoU counts have an exact reference."""
    sem = real_occ3d['semantics']
    pred = shifted_down(sem)
    if direction == 'down':
        ii, jj = np.meshgrid(np.arange(200), np.arange(200), indexing='ij')
        origins = np.stack([(ii + 0.5) * VOXEL - 40, (jj + 0.5) * VOXEL - 40, np.full(ii.shape, 15.5 * VOXEL - 1)],
                           -1).reshape(-1, 3)
        rays, reference = np.array([[0.0, 0.0, -1.0]], np.float32), first_hits_down
    else:
        jj, kk = np.meshgrid(np.arange(200), np.arange(16), indexing='ij')
        origins = np.stack([np.full(jj.shape, 0.5 * VOXEL - 40), (jj + 0.5) * VOXEL - 40, (kk + 0.5) * VOXEL - 1],
                           -1).reshape(-1, 3)
        rays, reference = np.array([[1.0, 0.0, 0.0]], np.float32), first_hits_along_x
    metric = RayIoU(rays=rays)
    out = metric.cast([pred], [sem], [origins])[0]
    gl, gd = reference(sem)
    pl, pd = reference(pred)
    np.testing.assert_array_equal(out['gt_label'], gl)
    np.testing.assert_array_equal(out['pred_label'], pl)
    # float32 depths (as the original): the voxel distance stored in float32 (half an ulp at <= 200 voxels, 3.0e-6 m),
    # float32(0.4) = 0.4 + 6e-9 (1.2e-6 m at 200 voxels), the float32 product (half an ulp at <= 80 m, 3.8e-6 m):
    # <= 8e-6 m against the float64 reference
    np.testing.assert_allclose(out['gt_depth'], gd, atol=2e-5)
    np.testing.assert_allclose(out['pred_depth'], pd, atol=2e-5)
    metric.add_batch([pred], [sem], [origins])
    ref = ray_iou_by_counts(pl, gl, pd, gd)
    np.testing.assert_array_equal(metric.per_class_iou(), ref)  # the same counts divided once: exact (NaN alike)
    if direction == 'down':
        # shifting by 1.2 m misses at 1 m but not at 2 or 4 m: the shifted classes score lower at 1 m;
        # vegetation is gone from the prediction: 0 at every threshold
        assert np.all(ref[:, 16] == 0)
        scored = ~np.isnan(ref[0])
        assert np.all(ref[0, scored] <= ref[1, scored]) and np.array_equal(ref[1, scored], ref[2, scored])
        assert np.nanmean(ref[0]) < np.nanmean(ref[1]) - 0.05
    print(f'\nRayIoU ({direction}) of the shifted prediction: {metric.summary()}')


ORIGINS = np.array([[0.94, 0.0, 1.84], [12.0, -6.0, 1.84], [-20.0, 9.0, 1.2]])  # metres, inside the grid


def test_rayiou_with_lidar_rays_from_origins_inside_the_grid(real_occ3d):
    """The protocol's 14,040 rays from three origins: prediction = GT scores 1 for every class a ray hits
    (NaN for the rest); relabelling cars as trucks (same geometry) zeroes car and truck only."""
    sem = real_occ3d['semantics']
    same = RayIoU()
    rays = same.cast([sem], [sem], [ORIGINS])[0]
    assert len(rays['gt_label']) == 3 * 14040
    hit_classes = set(np.unique(rays['gt_label']).tolist()) - {FREE}
    assert 4 in hit_classes and hit_classes <= PRESENT
    same.add_rays(**rays)
    iou = same.per_class_iou()
    for c in range(17):
        assert np.all(iou[:, c] == 1.0) if c in hit_classes else np.all(np.isnan(iou[:, c])), c
    assert same.summary()['RayIoU'] == 1.0

    pred = sem.copy()
    pred[sem == 4] = 10
    swapped = RayIoU()
    swapped.add_batch([pred], [sem], [ORIGINS])
    iou = swapped.per_class_iou()
    # the rays that hit a car in the GT hit a truck in the prediction, at the same depth
    assert swapped.pred_count[10] == swapped.gt_count[4] > 0 and swapped.gt_count[10] == 0
    assert np.all(iou[:, 4] == 0) and np.all(iou[:, 10] == 0)  # truck: predicted only, IoU 0 (not NaN)
    for c in hit_classes - {4}:
        assert np.all(iou[:, c] == 1.0), c
    n = len(hit_classes) + 1  # the classes in the mean: those hit, plus truck
    # a mean of 3 (n - 2) ones and 6 zeros: an exact integer sum divided once, the same rounding as (n - 2) / n
    assert swapped.summary()['RayIoU'] == (n - 2) / n


# ---------------------------------------------------------------------------------- the loss's GT points
def test_loss_ground_truth_points_are_the_occupied_voxel_centres(real_occ3d):
    from mmcv import Config
    from mmdet.models import build_head

    import models  # noqa: F401
    import real_data
    cfg = Config.fromfile(f'{real_data.REPO_ROOT}/configs/ops-t_r50_704x256_8f_12e.py')
    head = build_head(dict(cfg.model.pts_bbox_head, train_cfg=cfg.model.train_cfg.pts, test_cfg=cfg.model.test_cfg.pts))
    sem, mask = real_occ3d['semantics'], real_occ3d['mask_camera']
    (points, labels, visible), = head.gt_points(torch.from_numpy(sem[None]), torch.from_numpy(mask[None]), 'cpu')
    idx = np.argwhere(sem != FREE)
    assert points.shape == (len(idx), 3) == (39092, 3) and points.dtype == torch.float32
    centres = (idx.astype(np.float64) + 0.5) * VOXEL + PC_MIN  # float64 reference
    # order-free comparison: the voxel each point is the centre of
    got = np.round((points.double().numpy() - PC_MIN) / VOXEL - 0.5).astype(np.int64)
    order = np.lexsort(got.T[::-1])
    np.testing.assert_array_equal(got[order], idx)  # idx is already x-major sorted
    # float32 (i + 0.5) / 200 * 80 - 40: half an ulp of the quotient (< 1) times 80 m (2.4e-6 m), of the product
    # (<= 80 m: 3.8e-6 m) and of the sum (<= 40 m: 1.9e-6 m): <= 8.1e-6 m, far below a voxel's 0.4 m
    np.testing.assert_allclose(points.double().numpy()[order], centres, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(labels.numpy()[order], sem[tuple(idx.T)])
    np.testing.assert_array_equal(visible.numpy()[order], mask[tuple(idx.T)])


# ---------------------------------------------------------------------------------- the BEV picture
def test_bev_image_shows_the_top_voxel_of_each_column(real_occ3d):
    sem = real_occ3d['semantics']
    top = np.full((200, 200), FREE, np.uint8)
    for k in range(16):  # later (higher) layers overwrite lower ones
        top = np.where(sem[:, :, k] != FREE, sem[:, :, k], top)
    img = vis.bev_image(sem)
    assert img.shape == (200, 200, 3) and img.dtype == np.uint8
    # image row r shows y index 199 - r (y up), column c shows x index c
    np.testing.assert_array_equal(img, vis.PALETTE[top.T[::-1]])
    # two cells by hand: a car column and a free column
    x, y = np.argwhere(top == 4)[0]
    assert tuple(img[199 - y, x]) == (0, 150, 245)
    free_cols = np.argwhere(top == FREE)
    if len(free_cols):
        x, y = free_cols[0]
        assert tuple(img[199 - y, x]) == (255, 255, 255)


def test_bev_picture_is_written(real_occ3d, tmp_path):
    from PIL import Image

    import real_data
    out = vis.main(['--pred', real_data.OCC3D_LABELS, '--gt', real_data.OCC3D_LABELS, '--out',
                    str(tmp_path / 'bev.png')])
    png = np.asarray(Image.open(out).convert('RGB'))
    assert png.shape == (630, 1080, 3)  # figsize (12, 7) at 90 dpi
    car = np.all(png[:540] == (0, 150, 245), axis=-1)  # above the legend strip
    # prediction = GT: the car colour shows in both halves (prediction left, ground truth right)
    left, right = car[:, :540].sum(), car[:, 540:].sum()
    # The panels share their pixel rows; their columns sit at another sub-pixel phase, which moves each horizontal
    # run of car cells by at most one pixel column in each of its ~2.3 pixel rows (nearest-neighbour cells of
    # 2.3 px): this grid has 55 such runs, <= 165 of ~2070 px (8%); 20% leaves room for another layout
    assert left > 50 and right > 50 and abs(int(left) - int(right)) < 0.2 * max(left, right)
