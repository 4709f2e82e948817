"""tools/synthetic/nusc_occupancy.py and `make_synthetic_nuscenes.py --benchmark nuscenes-occupancy`: the release's
layout, named by the tables' tokens, with labels that agree with a brute-force labelling of the world in the
LiDAR frame at 0.2 m."""
import json
import os.path as osp

import numpy as np

from core.benchmarks.nuscenes_occupancy import NUSCENES_OCCUPANCY, RELEASE_CLASS_NAMES
from core.occ3d import CLASS_NAMES as OCC3D_CLASS_NAMES
from nusc_occupancy_world import nusc_occupancy_world
from tools import make_synthetic_nuscenes as maker
from tools.synthetic import nusc_occupancy, writer
from tools.synthetic.world import FREE


def test_labels_match_a_brute_force_labelling_in_the_lidar_frame(synthetic_world, tmp_path_factory):
    """Random voxels: the class of the last (highest-priority) shape holding one of its 8 sample points (a quarter
    voxel, 0.05 m, from the centre), else the ground class in the layer holding the ground, else empty."""
    world_ns = nusc_occupancy_world(synthetic_world, tmp_path_factory)
    scene_cfg, world = synthetic_world.scenes[0], synthetic_world.worlds[0]
    k = 1
    path = nusc_occupancy.label_file(world_ns.root, scene_cfg, k)
    rows = np.load(path)
    assert rows.dtype == np.uint16 and rows.shape[1] == 4
    sem = NUSCENES_OCCUPANCY.read_labels(path)['semantics']
    lidar2global = scene_cfg.ego_pose(scene_cfg.key_time(k), world) @ writer.sensor2ego(writer.LIDAR)
    ground_layer = int(np.floor((-lidar2global[2, 3] + 5.0) / 0.2))       # LiDAR-frame z of global z = 0
    to_world = {c: OCC3D_CLASS_NAMES.index(n) for c, n in enumerate(NUSCENES_OCCUPANCY.class_names)}
    to_world[16] = FREE
    rng = np.random.default_rng(3)
    occupied = np.argwhere(sem != 16)
    picks = np.concatenate([occupied[rng.choice(len(occupied), 120, replace=False)],
                            rng.integers(0, (512, 512, 40), (120, 3))])
    offs = np.array([[x, y, z] for x in (-0.05, 0.05) for y in (-0.05, 0.05) for z in (-0.05, 0.05)])
    prio = {15: 0, 16: 1, 1: 3, 2: 3, 7: 4, 8: 4}                          # world ids: paint order of occupancy.py
    for i, j, z in picks:
        centre = np.array([i, j, z]) * 0.2 + 0.1 + np.array([-51.2, -51.2, -5.0])
        pts = (centre + offs) @ lidar2global[:3, :3].T + lidar2global[:3, 3]
        inside = [s for s in range(len(world)) if world.inside(s, pts).any()]
        if inside:
            expected = world.label[max(inside, key=lambda s: (prio.get(int(world.label[s]), 2), s))]
        elif z == ground_layer:
            c = centre @ lidar2global[:3, :3].T + lidar2global[:3, 3]
            expected = world.ground_class(np.array([c[0]]), np.array([c[1]]))[0]
        else:
            expected = FREE
        assert to_world[int(sem[i, j, z])] == expected, (i, j, z)
    # the release's ids: the class names of the world's ids (noise never occurs in this world)
    ids = np.unique(rows[:, 3])
    assert 0 not in ids and {RELEASE_CLASS_NAMES[i] for i in ids} <= set(OCC3D_CLASS_NAMES)
    assert {'car', 'driveable_surface', 'manmade', 'vegetation'} <= {RELEASE_CLASS_NAMES[i] for i in ids}


def test_the_option_writes_the_layout_under_the_tables_tokens(tmp_path):
    argv = ['--out', str(tmp_path / 'w'), '--train-scenes', '1', '--val-scenes', '0', '--keyframes', '1',
            '--sweeps', '0', '--scale', '0.05', '--workers', '1', '--quiet']
    summary = maker.main(argv + ['--benchmark', 'nuscenes-occupancy'])
    assert summary['params']['benchmark'] == 'nuscenes-occupancy'
    root = tmp_path / 'w'
    with open(root / 'v1.0-mini' / 'scene.json') as f:
        scene = json.load(f)[0]
    with open(root / 'v1.0-mini' / 'sample_data.json') as f:
        lidar = [sd for sd in json.load(f) if sd['filename'].startswith('samples/LIDAR_TOP')]
    assert len(lidar) == 1
    path = root / 'occupancy' / f'scene_{scene["token"]}' / 'occupancy' / f'{lidar[0]["token"]}.npy'
    assert osp.isfile(path) and len(np.load(path)) > 0
    assert osp.isfile(next((root / 'gts').glob('*/*/labels.npz')))        # the Occ3D labels are still written
    default = maker.main(['--out', str(tmp_path / 'd')] + argv[2:])
    assert 'benchmark' not in default['params'] and not (tmp_path / 'd' / 'occupancy').exists()
