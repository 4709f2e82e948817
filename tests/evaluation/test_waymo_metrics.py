"""Occ3D-Waymo through the shared metrics: mIoU over the 15 classes (GENERALOBJECT counted, free not) with and
without the camera mask (final_voxel_state AND infov), and RayIoU on its grid from the roof-LiDAR origin, on
release-format files against hand-computed values."""
import dataclasses

import numpy as np

from core.benchmarks import OCC3D_WAYMO
from evaluation.evaluator import evaluate_occupancy
from evaluation.miou import OccMIoU

GRID = (200, 200, 16)
GO, VEHICLE, BUILDING, ROAD, FREE = 0, 1, 10, 13, 15


def hand_grids():
    """(gt, pred, mask) in our ids, and the release-format arrays of the same ground truth.

    GT: VEHICLE (10, 10, 0..9), ROAD (20, 0..19, 2), GENERALOBJECT (50, 50, 5). Prediction: VEHICLE at
    (10, 10, 0..5) and (11, 10, 0..3), VEHICLE on the GENERALOBJECT voxel, ROAD at (20, 0..19, 2) and (21, 0..4, 2).
    Camera mask: all but the VEHICLE voxels (10, 10, 8..9) (not seen by a camera: final_voxel_state 0) and the
    extra ROAD row (21, 0..4, 2) (outside the field of view: infov 0).
    """
    gt = np.full(GRID, FREE, np.uint8)
    gt[10, 10, 0:10] = VEHICLE
    gt[20, 0:20, 2] = ROAD
    gt[50, 50, 5] = GO
    pred = np.full(GRID, FREE, np.uint8)
    pred[10, 10, 0:6] = VEHICLE
    pred[11, 10, 0:4] = VEHICLE
    pred[50, 50, 5] = VEHICLE
    pred[20, 0:20, 2] = ROAD
    pred[21, 0:5, 2] = ROAD
    final = np.ones(GRID, np.uint8)
    final[10, 10, 8:10] = 0
    infov = np.ones(GRID, np.uint8)
    infov[21, 0:5, 2] = 0
    release = dict(voxel_label=np.where(gt == FREE, 23, gt).astype(np.uint8),
                   origin_voxel_state=np.ones(GRID, np.uint8), final_voxel_state=final, infov=infov)
    return gt, pred, (final > 0) & (infov > 0), release


# Hand counts (TP / (gt + pred - TP)); no other class has ground truth (NaN, skipped):
#   no mask: GO 0/(1+0-0) = 0, VEHICLE 6/(10+11-6) = 6/15, ROAD 20/(20+25-20) = 20/25
#   mask:    GO 0,            VEHICLE 6/(8+11-6) = 6/13,  ROAD 20/(20+20-20) = 1
MIOU_NO_MASK = round((0 + 6 / 15 + 20 / 25) / 3 * 100, 2)     # 40.0
MIOU_MASK = round((0 + 6 / 13 + 1) / 3 * 100, 2)              # 48.72


def test_miou_counts_the_15_classes_with_and_without_the_camera_mask():
    gt, pred, mask, _ = hand_grids()
    for use_mask, expected in ((False, MIOU_NO_MASK), (True, MIOU_MASK)):
        metric = OccMIoU(OCC3D_WAYMO.label_names, use_camera_mask=use_mask)
        metric.add_batch(pred, gt, mask)
        assert metric.miou() == expected
        iou = metric.per_class_iou()
        assert len(iou) == 16 and np.isnan(iou[[2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 14]]).all()
    assert (MIOU_NO_MASK, MIOU_MASK) == (40.0, 48.72)


def write_sample(root, release, frame):
    path = root / 'validation' / '000' / f'{frame:03d}_04.npz'
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **release)


def info(frame, x):
    """A validation frame whose vehicle stands at global (x, 0, 0), heading +x; LiDAR at the roof position."""
    return dict(token=f'{1000000 + frame:07d}', scene_name='1000', split='validation', scene_idx=0, frame_idx=frame,
                ego2global_rotation=np.eye(3), ego2global_translation=np.array([x, 0.0, 0.0]),
                lidar2ego_rotation=np.eye(3), lidar2ego_translation=np.array(OCC3D_WAYMO.lidar_position))


def sparse(pred):
    occ = np.argwhere(pred != FREE)
    return dict(sem_pred=pred[tuple(occ.T)].astype(np.int64), occ_loc=occ)


def test_release_files_through_the_evaluator(tmp_path):
    """The files' 23 is free, the mask is final_voxel_state AND infov; RayIoU from the roof LiDAR, two rays."""
    gt, pred, _, release = hand_grids()
    # RayIoU: a BUILDING wall across x index 150 in the ground truth and at 148 in the prediction, on the +x ray
    # from the LiDAR at (1.43, 0, 2.18) m = voxel (103.575, 100, 7.95); the -x ray hits a GT VEHICLE at x index 90
    # that the prediction lacks.
    release['voxel_label'][150, 100, 7] = BUILDING
    pred = pred.copy()
    pred[148, 100, 7] = BUILDING
    release['voxel_label'][90, 100, 7] = VEHICLE
    write_sample(tmp_path, release, 0)
    rays = np.array([[1.0, 0.0, 0.0], [-1.0, 0.0, 0.0]], np.float32)
    metrics = evaluate_occupancy([sparse(pred)], [info(0, 0.0)], str(tmp_path), logger='silent', device='cpu',
                                 show_progress=False, rays=rays, benchmark='occ3d-waymo')
    # the two extra GT voxels: BUILDING (gt 1, pred 1, TP 0) -> IoU 0 and VEHICLE gains a missed voxel
    # (mask: VEHICLE 6/(9+11-6) = 6/14; BUILDING 0/(1+1) = 0): mean over GO, VEHICLE, BUILDING, ROAD
    assert metrics['mIoU'] == round((0 + 6 / 14 + 0 + 1) / 4 * 100, 2)
    # +x: GT exits voxel 150 at t = 151 - 103.575 voxels, the prediction exits 148 at 149 - 103.575: 0.8 m apart,
    # a true positive at 1, 2 and 4 m; -x: GT VEHICLE at 5.43 m, the prediction sees nothing (free): IoU 0.
    # BUILDING 1/(1 + 1 - 1) = 1, VEHICLE 0/(1 + 0 - 0) = 0: 0.5 at every threshold
    assert metrics['RayIoU@1'] == metrics['RayIoU@2'] == metrics['RayIoU@4'] == metrics['RayIoU'] == 0.5
    unmasked = evaluate_occupancy([sparse(pred)], [info(0, 0.0)], str(tmp_path), logger='silent', device='cpu',
                                  show_progress=False, rays=rays,
                                  benchmark=dataclasses.replace(OCC3D_WAYMO, camera_mask=False))
    # no mask: VEHICLE 6/(11+11-6) = 6/16, ROAD 20/25, GO 0, BUILDING 0
    assert unmasked['mIoU'] == round((0 + 6 / 16 + 0 + 20 / 25) / 4 * 100, 2)
    assert unmasked['RayIoU'] == metrics['RayIoU']          # RayIoU takes no mask


def test_origins_of_a_sequence_come_from_its_frames_poses(tmp_path):
    """Two frames 10 m apart: frame 0 also casts from frame 1's LiDAR, 10 m ahead, where the +x ray meets the wall
    (x index 150) 10 m sooner; a prediction 3 m short of the wall is a true positive only at 4 m, from both."""
    _, _, _, release = hand_grids()
    release['voxel_label'][:] = 23
    release['voxel_label'][150, 100, 7] = BUILDING          # frame 0's grid
    write_sample(tmp_path, release, 0)
    release['voxel_label'][:] = 23
    release['voxel_label'][125, 100, 7] = BUILDING          # the same wall seen from 10 m further (25 voxels)
    write_sample(tmp_path, release, 1)
    pred0 = np.full(GRID, FREE, np.uint8)
    pred0[143, 100, 7] = BUILDING                           # 7 voxels = 2.8 m short
    pred1 = np.full(GRID, FREE, np.uint8)
    pred1[125, 100, 7] = BUILDING                           # exact
    rays = np.array([[1.0, 0.0, 0.0]], np.float32)
    metrics = evaluate_occupancy([sparse(pred0), sparse(pred1)], [info(0, 0.0), info(1, 10.0)], str(tmp_path),
                                 logger='silent', device='cpu', show_progress=False, rays=rays,
                                 benchmark='occ3d-waymo')
    # frame 0 casts from both LiDARs (2 rays, each 2.8 m off: TP only at 4 m), frame 1 from both (its own and the
    # one 10 m behind, which sees its wall 10 m further: exact prediction, TP at every threshold): BUILDING gt 4,
    # pred 4, TP@1 = TP@2 = 2, TP@4 = 4
    assert metrics['RayIoU@1'] == metrics['RayIoU@2'] == 2 / (4 + 4 - 2)
    assert metrics['RayIoU@4'] == 1.0
