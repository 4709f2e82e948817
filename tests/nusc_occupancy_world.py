"""The tests' synthetic world in the nuScenes-Occupancy layout, built once per test process.

It reuses the session's `synthetic_world` (conftest.py: nuScenes tables, images, Occ3D labels) through symbolic
links and adds the nuScenes-Occupancy label files of every key frame (tools/synthetic/nusc_occupancy.py; about
1.6 s per frame on the 2-core machine), then the info pickles of `gen_sweep_info.py --benchmark
nuscenes-occupancy`. The world's own folder is not written to.
"""
import multiprocessing
import os
import types

_CACHE = {}
# what the linked root shares with the synthetic world (its labels stay where they are: gts/ is not linked)
_SHARED = ('v1.0-mini', 'samples', 'sweeps', 'maps')


def nusc_occupancy_world(synthetic_world, tmp_path_factory):
    """SimpleNamespace(root, occ_root, train, val, world): the linked root, its occupancy/ folder, the train and
    val info pickles, and the synthetic_world fixture's namespace (scenes, worlds)."""
    if 'world' not in _CACHE:
        import gen_sweep_info
        from tools.synthetic import nusc_occupancy
        root = tmp_path_factory.mktemp('nusc_occupancy') / 'nuscenes'
        root.mkdir()
        for name in _SHARED:
            os.symlink(os.path.join(synthetic_world.root, name), root / name)
        with multiprocessing.get_context('fork').Pool(2) as pool:
            nusc_occupancy.write_world_labels(str(root), synthetic_world.scenes, pool)
        written = gen_sweep_info.main(['--data-root', str(root), '--version', 'v1.0-mini', '--quiet',
                                       '--benchmark', 'nuscenes-occupancy'])
        _CACHE['world'] = types.SimpleNamespace(root=str(root), occ_root=str(root / 'occupancy'),
                                                train=written['train_mini'][0], val=written['val_mini'][0],
                                                world=synthetic_world)
    return _CACHE['world']
