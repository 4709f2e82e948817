"""tools/synthetic/occupancy.py: Occ3D labels and masks of the synthetic world agree with a brute-force
labelling and exact ray casting against its shapes; the LiDAR points lie on its surfaces."""
import os.path as osp

import numpy as np

from tools.synthetic import calib, occupancy, writer
from tools.synthetic.world import FREE

CAMS = calib.CAMERA_NAMES


def test_semantics_match_a_brute_force_labelling(synthetic_world):
    """Random voxels: label == last (highest-priority) shape containing one of its 8 sample points,
    else the ground class in the ground layer, else free."""
    scene_cfg, world = synthetic_world.scenes[0], synthetic_world.worlds[0]
    tok = writer.token(scene_cfg.seed, scene_cfg.name, 'sample', 1)
    sem = np.load(osp.join(synthetic_world.root, 'gts', scene_cfg.name, tok, 'labels.npz'))['semantics']
    assert sem.shape == (200, 200, 16) and sem.dtype == np.uint8
    ego2global = scene_cfg.ego_pose(scene_cfg.key_time(1), world)
    rng = np.random.default_rng(1)
    occupied = np.argwhere(sem != FREE)
    picks = np.concatenate([occupied[rng.choice(len(occupied), 150, replace=False)],
                            rng.integers(0, (200, 200, 16), (150, 3))])
    offs = np.array([[x, y, z] for x in (-0.1, 0.1) for y in (-0.1, 0.1) for z in (-0.1, 0.1)])
    prio = {15: 0, 16: 1, 1: 3, 2: 3, 7: 4, 8: 4}
    for i, j, k in picks:
        centre = np.array([i, j, k]) * 0.4 + 0.2 + np.array([-40, -40, -1.0])
        pts = (centre + offs) @ ego2global[:3, :3].T + ego2global[:3, 3]
        inside = [s for s in range(len(world)) if world.inside(s, pts).any()]
        if inside:
            best = max(inside, key=lambda s: (prio.get(int(world.label[s]), 2), s))
            expected = world.label[best]
        elif k == 2:  # the layer [-0.2, 0.2] m holds the ground (z = 0)
            c = centre @ ego2global[:3, :3].T + ego2global[:3, 3]
            expected = world.ground_class(np.array([c[0]]), np.array([c[1]]))[0]
        else:
            expected = FREE
        assert sem[i, j, k] == expected, (i, j, k)
    # a street world: road, sidewalk, terrain, buildings, vegetation, cars and pedestrians are all there
    present = set(np.unique(sem))
    assert {4, 7, 11, 13, 14, 15, 16, FREE} <= present


def test_camera_mask_agrees_with_exact_ray_casting(synthetic_world):
    """mask_camera (depth-map test) vs casting the exact ray from each camera to the voxel centre."""
    scene_cfg, world = synthetic_world.scenes[0], synthetic_world.worlds[0]
    k = 2
    tok = writer.token(scene_cfg.seed, scene_cfg.name, 'sample', k)
    labels = np.load(osp.join(synthetic_world.root, 'gts', scene_cfg.name, tok, 'labels.npz'))
    mask = labels['mask_camera'].astype(bool)
    assert 0.05 < mask.mean() < 0.95  # a mask that hides part of the grid, not (almost) nothing or everything
    ego2global = scene_cfg.ego_pose(scene_cfg.key_time(k), world)
    w, h = calib.image_size(scene_cfg.scale)
    rng = np.random.default_rng(2)
    picks = rng.integers(0, (200, 200, 16), (400, 3))
    centres = (picks * 0.4 + 0.2 + np.array([-40, -40, -1.0])) @ ego2global[:3, :3].T + ego2global[:3, 3]
    visible = np.zeros(len(picks), bool)
    for cam in CAMS:
        t_cam = scene_cfg.key_time(k) + int(round(calib.CAMERA_TIME_OFFSETS[cam] * 1e6))
        pose = scene_cfg.ego_pose(t_cam, world) @ writer.sensor2ego(cam)
        intrinsic = calib.camera_intrinsic(cam, scene_cfg.scale)
        pc = (centres - pose[:3, 3]) @ pose[:3, :3]
        uv = pc[:, :2] / pc[:, 2:] * intrinsic[[0, 1], [0, 1]] + intrinsic[[0, 1], [2, 2]]
        inside = (pc[:, 2] > 0.1) & (uv[:, 0] > -0.5) & (uv[:, 0] < w - 0.5) & (uv[:, 1] > -0.5) & (uv[:, 1] < h - 0.5)
        d = centres[inside] - pose[:3, 3]
        dist = np.linalg.norm(d, axis=1)
        t, _, _ = world.cast(pose[:3, 3], d / dist[:, None])
        visible[np.nonzero(inside)[0][t >= dist - occupancy.VIS_TOL]] = True
    agreement = (visible == mask[tuple(picks.T)]).mean()
    # the mask tests voxel centres against per-pixel depth maps (one depth per pixel, VIS_TOL of slack), this loop
    # casts the exact ray: they differ only for centres whose ray passes within a pixel of an occluding edge
    assert agreement > 0.9, agreement


def test_lidar_points_lie_on_the_world_surfaces(synthetic_world):
    scene_cfg, world = synthetic_world.scenes[1], synthetic_world.worlds[1]
    t_key = scene_cfg.key_time(0)
    pts = np.fromfile(osp.join(synthetic_world.root, writer.lidar_filename(scene_cfg, t_key)), dtype=np.float32)
    pts = pts.reshape(-1, 5)
    assert len(pts) > 1000 and set(np.unique(pts[:, 4])) <= set(range(32))
    lidar2global = scene_cfg.ego_pose(t_key, world) @ writer.sensor2ego('LIDAR_TOP')
    sample = pts[np.random.default_rng(3).choice(len(pts), 300, replace=False), :3].astype(np.float64)
    g = sample @ lidar2global[:3, :3].T + lidar2global[:3, 3]
    d = g - lidar2global[:3, 3]
    dist = np.linalg.norm(d, axis=1)
    t, _, _ = world.cast(lidar2global[:3, 3], d / dist[:, None])
    # float32 storage moves each point by <= sqrt(3) x 3.8e-6 m (half an ulp below 128 m; range <= 70 m) off its
    # surface; along the ray that grows by 1 / cos(incidence): <= 70 m / 1.84 m = 38 for ground hits (2.5e-4 m);
    # 2e-3 m allows walls hit at incidences up to 89.8 degrees
    np.testing.assert_allclose(t, dist, atol=2e-3)
