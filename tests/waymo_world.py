"""The tiny synthetic Occ3D-Waymo world of the Waymo tests (tools/make_synthetic_waymo.py), generated once per
test session: 1 training + 1 validation sequence of 4 frames, images at 0.05 of the full size (front cameras
96x64, side cameras 96x44). `waymo_world(tmp_path_factory)` returns it; test modules wrap it in a fixture."""
import os.path as osp
import types

WAYMO_ARGS = ['--train-scenes', '1', '--val-scenes', '1', '--frames', '4', '--scale', '0.05', '--workers', '1',
              '--seed', '0', '--quiet']
FRONT_HW, SIDE_HW = (64, 96), (44, 96)
_WORLDS = {}


def waymo_world(tmp_path_factory):
    """SimpleNamespace(root, data_root, occ_root, train, val, train_poses, val_poses, args, scenes, summary)."""
    if 'world' not in _WORLDS:
        from tools import make_synthetic_waymo as maker
        root = str(tmp_path_factory.mktemp('synthetic_waymo') / 'waymo')
        args = maker.parse_args(WAYMO_ARGS + ['--out', root])
        summary = maker.generate(args)
        occ = osp.join(root, 'occ3d_waymo')
        _WORLDS['world'] = types.SimpleNamespace(
            root=root, data_root=osp.join(root, 'kitti_format'), occ_root=occ, args=args,
            scenes=maker.make_scenes(args), summary=summary,
            train=osp.join(occ, 'waymo_infos_train.pkl'), val=osp.join(occ, 'waymo_infos_val.pkl'),
            train_poses=osp.join(occ, 'cam_infos.pkl'), val_poses=osp.join(occ, 'cam_infos_vali.pkl'))
    return _WORLDS['world']
