"""Write the info pickles of OPS from raw nuScenes and the Occ3D labels (docs/data.md).

    python gen_sweep_info.py --data-root data/nuscenes --version v1.0-trainval
    python gen_sweep_info.py --data-root data/nuscenes --version v1.0-test
    python gen_sweep_info.py --data-root data/nuscenes --version v1.0-mini
    python gen_sweep_info.py --data-root data/nuscenes --version v1.0-trainval --benchmark nuscenes-occupancy

Outputs in --out-dir (default: --data-root): nuscenes_infos_{train,val}_sweep.pkl (trainval),
nuscenes_infos_test_sweep.pkl (test), nuscenes_infos_{train,val}_mini_sweep.pkl (mini). Each is
`dict(infos=[...], metadata=dict(version=...))` with one info per key frame:

* lidar_path, token, lidar_token, scene_name, scene_token, timestamp (us), occ_path (the label file of
  --benchmark: Occ3D-nuScenes `gts/<scene_name>/<token>/labels.npz`, nuScenes-Occupancy
  `occupancy/scene_<scene_token>/occupancy/<lidar_token>.npy`);
* lidar2ego_translation / _rotation (quaternion w, x, y, z), ego2global_translation / _rotation;
* cams: for each of the 6 cameras {data_path, type, timestamp (us), cam_intrinsic (3x3),
  sensor2lidar_rotation (3x3, column convention: p_lidar = R p_cam + t), sensor2lidar_translation,
  sensor2global_rotation (3x3, ROW convention, i.e. the transpose of camera->global),
  sensor2global_translation (camera centre in global)};
* cam_sweeps: 5 dicts camera -> {data_path, sensor2global_rotation, sensor2global_translation,
  cam_intrinsic, timestamp} of the 1st..5th previous image of each camera (empty list for the first
  sample of a scene);
* lidar_sweeps: up to 10 previous LiDAR sweeps (mmdet3d's `sweeps` format).

Paths are `<data-root>/<filename>`: a relative --data-root gives paths relative to the directory
the training is started from (as in the original code); an absolute one gives absolute paths.

The mmdet3d `create_data` step of the original is not needed. When its pickles exist
(<out-dir>/nuscenes_infos_{train,val,test}.pkl for the same version), they are extended instead:
their order and extra fields (boxes, ...) are kept and the fields above are added or replaced.
"""
import argparse
import os
import os.path as osp
import pickle

import numpy as np

from core.benchmarks import DEFAULT_BENCHMARK, benchmark_names, get_benchmark
from core.geometry import rigid_transform
from core.occ3d import CAMERA_NAMES

TABLES = ['category', 'attribute', 'visibility', 'instance', 'sensor', 'calibrated_sensor', 'ego_pose', 'log',
          'scene', 'sample', 'sample_data', 'sample_annotation', 'map']
# version -> [(devkit split name, output tag, mmdet3d source pickle tag)]
SPLITS = {
    'v1.0-trainval': [('train', 'train', 'train'), ('val', 'val', 'val')],
    'v1.0-test': [('test', 'test', 'test')],
    'v1.0-mini': [('mini_train', 'train_mini', 'train'), ('mini_val', 'val_mini', 'val')],
}
NUM_CAM_SWEEPS = 5
NUM_LIDAR_SWEEPS = 10


class DataPrepError(RuntimeError):
    """Raised for missing or inconsistent input data; the message names the file and the fix."""
    user_error = True  # engine/cli.py: one line, no traceback


def parse_args(argv=None):
    p = argparse.ArgumentParser(description='nuScenes + Occ3D -> OPS info pickles (*_sweep.pkl)')
    p.add_argument('--data-root', default='data/nuscenes', help='folder with <version>/, samples/, sweeps/ (and gts/)')
    p.add_argument('--version', default='v1.0-trainval', choices=sorted(SPLITS))
    p.add_argument('--out-dir', default=None, help='where the pickles go (default: --data-root)')
    p.add_argument('--occ-root', default=None, help='Occ3D labels folder (default: <data-root>/gts)')
    p.add_argument('--benchmark', default=DEFAULT_BENCHMARK, choices=benchmark_names(),
                   help='whose label files the infos point to (occ_path), core/benchmarks/')
    p.add_argument('--no-check-files', action='store_true', help='do not check that every image and label exists')
    p.add_argument('--quiet', action='store_true', help='no progress bar')
    p.add_argument('--debug', action='store_true', help='show the full traceback of an error')
    return p.parse_args(argv)


def check_tables(data_root, version):
    table_root = osp.join(data_root, version)
    if not osp.isdir(table_root):
        raise DataPrepError(
            f'nuScenes tables not found: {table_root} is not a directory. --data-root must be the folder that '
            f'holds {version}/, samples/ and sweeps/ (e.g. data/nuscenes), and --version one of {sorted(SPLITS)}')
    missing = [t for t in TABLES if not osp.isfile(osp.join(table_root, f'{t}.json'))]
    if missing:
        raise DataPrepError(f'nuScenes table(s) missing in {table_root}: {", ".join(m + ".json" for m in missing)}. '
                            f'Extract the complete metadata archive of {version} into {data_root}')


def corrupt_table(table_root, names=TABLES):
    """(path, what is wrong) of the first nuScenes table in `table_root` that is not valid JSON, else None."""
    import json
    for name in names:
        path = osp.join(table_root, f'{name}.json')
        if not osp.isfile(path):
            continue
        if osp.getsize(path) == 0:
            return path, 'the file is empty'
        try:
            with open(path, encoding='utf-8') as f:
                json.load(f)
        except UnicodeDecodeError as exc:
            return path, f'not UTF-8 text ({exc.reason} at byte {exc.start})'
        except ValueError as exc:  # json.JSONDecodeError
            return path, f'not valid JSON ({getattr(exc, "msg", exc)} at line {getattr(exc, "lineno", "?")} ' \
                         f'column {getattr(exc, "colno", "?")})'
    return None


def load_tables(version, data_root, verbose):
    """nuscenes-devkit's NuScenes object; a corrupt table gives a DataPrepError naming the file."""
    from nuscenes.nuscenes import NuScenes
    table_root = osp.join(data_root, version)
    try:
        return NuScenes(version=version, dataroot=data_root, verbose=verbose)
    except Exception as exc:  # noqa: BLE001 (the devkit raises JSONDecodeError, KeyError, ... on bad tables)
        bad = corrupt_table(table_root)
        if bad is not None:
            raise DataPrepError(f'{bad[0]}: {bad[1]}: the file is truncated or corrupt; extract the {version} '
                                f'metadata archive into {data_root} again') from exc
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ''
        raise DataPrepError(f'cannot read the nuScenes tables in {table_root} ({type(exc).__name__}: {detail}); '
                            f'they are incomplete or inconsistent: extract the complete {version} metadata '
                            f'archive again') from exc


class InfoBuilder:
    """Builds the info dicts of one nuScenes version with the devkit's NuScenes object."""

    def __init__(self, nusc, data_root, occ_root, check_files=True, require_occ=True, benchmark=DEFAULT_BENCHMARK):
        self.nusc = nusc
        self.benchmark = get_benchmark(benchmark)
        self.data_root = data_root
        self.occ_root = occ_root
        self.check_files = check_files
        self.require_occ = require_occ

    def path(self, filename, required=True):
        path = osp.join(self.data_root, filename)
        if required and self.check_files and not osp.isfile(path):
            raise DataPrepError(f'file listed in the nuScenes tables is missing: {path}. Extract the samples/ and '
                                f'sweeps/ archives into --data-root, or pass --no-check-files to skip this check')
        return path

    def sensor_entry(self, sd_token, lidar2global, required=True):
        """mmdet3d-style sensor dict of a sample_data record, relative to the LiDAR pose `lidar2global`.

        `required`: the file must exist (camera images; LiDAR files are not used by the method)."""
        sd = self.nusc.get('sample_data', sd_token)
        cs = self.nusc.get('calibrated_sensor', sd['calibrated_sensor_token'])
        pose = self.nusc.get('ego_pose', sd['ego_pose_token'])
        sensor2global = rigid_transform(pose['rotation'], pose['translation']) @ \
            rigid_transform(cs['rotation'], cs['translation'])
        sensor2lidar = np.linalg.inv(lidar2global) @ sensor2global
        entry = dict(data_path=self.path(sd['filename'], required), type=sd['channel'], sample_data_token=sd_token,
                     sensor2ego_translation=cs['translation'], sensor2ego_rotation=cs['rotation'],
                     ego2global_translation=pose['translation'], ego2global_rotation=pose['rotation'],
                     timestamp=sd['timestamp'], sensor2lidar_rotation=sensor2lidar[:3, :3],
                     sensor2lidar_translation=sensor2lidar[:3, 3])
        if sd['sensor_modality'] == 'camera':
            entry['cam_intrinsic'] = np.array(cs['camera_intrinsic'], dtype=np.float64)
        return entry, sensor2global

    def camera_sweep(self, sd_token):
        """{data_path, sensor2global_rotation (row convention), sensor2global_translation, cam_intrinsic, timestamp}."""
        sd = self.nusc.get('sample_data', sd_token)
        cs = self.nusc.get('calibrated_sensor', sd['calibrated_sensor_token'])
        pose = self.nusc.get('ego_pose', sd['ego_pose_token'])
        sensor2global = rigid_transform(pose['rotation'], pose['translation']) @ \
            rigid_transform(cs['rotation'], cs['translation'])
        return dict(data_path=self.path(sd['filename']), sensor2global_rotation=sensor2global[:3, :3].T,
                    sensor2global_translation=sensor2global[:3, 3],
                    cam_intrinsic=np.array(cs['camera_intrinsic'], dtype=np.float64), timestamp=sd['timestamp'])

    def build(self, sample_token):
        nusc = self.nusc
        sample = nusc.get('sample', sample_token)
        scene = nusc.get('scene', sample['scene_token'])
        lidar_token = sample['data']['LIDAR_TOP']
        lidar_sd = nusc.get('sample_data', lidar_token)
        cs = nusc.get('calibrated_sensor', lidar_sd['calibrated_sensor_token'])
        pose = nusc.get('ego_pose', lidar_sd['ego_pose_token'])
        lidar2global = rigid_transform(pose['rotation'], pose['translation']) @ \
            rigid_transform(cs['rotation'], cs['translation'])
        info = dict(lidar_path=osp.join(self.data_root, lidar_sd['filename']), token=sample_token,
                    lidar_token=lidar_token,
                    scene_name=scene['name'], scene_token=scene['token'], timestamp=sample['timestamp'],
                    lidar2ego_translation=cs['translation'], lidar2ego_rotation=cs['rotation'],
                    ego2global_translation=pose['translation'], ego2global_rotation=pose['rotation'])

        cams = {}
        for cam in CAMERA_NAMES:
            if cam not in sample['data']:
                raise DataPrepError(f'sample {sample_token} of {scene["name"]} has no {cam} image in the tables')
            entry, sensor2global = self.sensor_entry(sample['data'][cam], lidar2global)
            entry['sensor2global_rotation'] = sensor2global[:3, :3].T
            entry['sensor2global_translation'] = sensor2global[:3, 3]
            for key in ('sample_data_token', 'sensor2ego_translation', 'sensor2ego_rotation',
                        'ego2global_translation', 'ego2global_rotation'):
                del entry[key]
            cams[cam] = entry
        info['cams'] = cams

        cam_sweeps = []
        if sample['prev']:
            current = {cam: nusc.get('sample_data', sample['data'][cam]) for cam in CAMERA_NAMES}
            for _ in range(NUM_CAM_SWEEPS):
                if any(not current[cam]['prev'] for cam in CAMERA_NAMES):
                    # the start of the recording: repeat the oldest images we have
                    if not cam_sweeps:
                        break
                    cam_sweeps.append(cam_sweeps[-1])
                    continue
                entry = {}
                for cam in CAMERA_NAMES:
                    entry[cam] = self.camera_sweep(current[cam]['prev'])
                    current[cam] = nusc.get('sample_data', current[cam]['prev'])
                cam_sweeps.append(entry)
        info['cam_sweeps'] = cam_sweeps

        lidar_sweeps = []
        sd = lidar_sd
        while len(lidar_sweeps) < NUM_LIDAR_SWEEPS and sd['prev']:
            entry, _ = self.sensor_entry(sd['prev'], lidar2global, required=False)
            lidar_sweeps.append(entry)
            sd = nusc.get('sample_data', sd['prev'])
        info['lidar_sweeps'] = lidar_sweeps

        # the benchmark's one label-path rule, with the label root (docs/data.md, "Label files")
        bench = self.benchmark
        occ_path = bench.label_path(info, self.occ_root)
        if self.check_files and self.require_occ and not osp.isfile(occ_path):
            raise DataPrepError(
                f'{bench.title} label file missing: {occ_path}. Extract the {bench.label_root_dir}/ folder of '
                f'{bench.label_source} into {self.occ_root} (or pass --occ-root), or pass --no-check-files')
        info[bench.label_path_key] = occ_path
        return info


def split_sample_tokens(nusc, split_scenes):
    """Sample tokens of the scenes named in split_scenes, scene by scene in time order."""
    wanted = set(split_scenes)
    tokens = []
    for scene in nusc.scene:
        if scene['name'] not in wanted:
            continue
        t = scene['first_sample_token']
        while t:
            tokens.append(t)
            t = nusc.get('sample', t)['next']
    return tokens


def extend_mmdet3d_infos(old_infos, builder):
    """Add / replace our fields in mmdet3d create_data infos; keeps their order and other fields."""
    infos = []
    for old in old_infos:  # an iterable (may be wrapped in a progress bar)
        new = dict(old)
        ours = builder.build(old['token'])
        if 'sweeps' in new:
            new['lidar_sweeps'] = new.pop('sweeps')
            ours.pop('lidar_sweeps')
        new.update(ours)
        infos.append(new)
    return infos


def generate(args):
    from nuscenes.utils.splits import create_splits_scenes

    data_root = args.data_root.rstrip('/') or '/'
    out_dir = args.out_dir or data_root
    bench = get_benchmark(args.benchmark)
    occ_root = args.occ_root or osp.join(data_root, bench.label_root_dir)
    check_tables(data_root, args.version)
    is_test = args.version == 'v1.0-test'
    if not is_test and not args.no_check_files and not osp.isdir(occ_root):
        raise DataPrepError(f'{bench.title} labels folder not found: {occ_root}. Extract the '
                            f'{bench.label_root_dir}/ folder of {bench.label_source} there, or pass --occ-root')
    nusc = load_tables(args.version, data_root, verbose=not args.quiet)
    builder = InfoBuilder(nusc, data_root, occ_root, check_files=not args.no_check_files, require_occ=not is_test,
                          benchmark=bench)
    splits = create_splits_scenes()
    known = {name for split, _, _ in SPLITS[args.version] for name in splits[split]}
    outside = sorted(s['name'] for s in nusc.scene if s['name'] not in known)
    if outside:
        print(f'note: {len(outside)} scene(s) belong to no {args.version} split and are skipped: {outside[:5]}...')
    os.makedirs(out_dir, exist_ok=True)
    written = {}
    for split, tag, mm_tag in SPLITS[args.version]:
        source = osp.join(out_dir, f'nuscenes_infos_{mm_tag}.pkl')
        old = None
        if osp.isfile(source):
            try:
                with open(source, 'rb') as f:
                    data = pickle.load(f)
            except Exception as exc:  # noqa: BLE001 (any unpickling failure: a truncated or foreign file)
                raise DataPrepError(f'{source}: cannot read this mmdet3d info pickle ({type(exc).__name__}: {exc}); '
                                    f'delete it (the infos are then built from the tables) or write it again') from exc
            if not isinstance(data, dict) or not isinstance(data.get('infos'), list):
                raise DataPrepError(f'{source}: not an mmdet3d info pickle (expected a dict with a list "infos"); '
                                    f'delete or rename it')
            if data.get('metadata', {}).get('version') == args.version:
                old = data['infos']
        items = old if old is not None else split_sample_tokens(nusc, splits[split])
        if not items:
            print(f'warning: no sample of split {split} in {args.version} at {data_root}; writing an empty list')
        if not args.quiet:
            from tqdm import tqdm
            desc = f'{split} (extending {osp.basename(source)})' if old is not None else split
            items = tqdm(items, desc=desc, unit='sample')
        if old is not None:
            infos = extend_mmdet3d_infos(items, builder)
        else:
            infos = [builder.build(t) for t in items]
        out = osp.join(out_dir, f'nuscenes_infos_{tag}_sweep.pkl')
        with open(out, 'wb') as f:
            pickle.dump(dict(infos=infos, metadata=dict(version=args.version)), f, protocol=pickle.HIGHEST_PROTOCOL)
        written[tag] = (out, len(infos))
        if not args.quiet:
            print(f'wrote {len(infos)} samples to {out}')
    return written


def main(argv=None):
    """Write the infos; a bad input raises SystemExit('gen_sweep_info.py: error: ...') (engine/cli.py)."""
    from engine.cli import run_main
    return run_main(lambda a: generate(parse_args(a)), 'gen_sweep_info.py', argv)


if __name__ == '__main__':
    from engine.cli import entry_point
    entry_point(lambda a: generate(parse_args(a)), 'gen_sweep_info.py')
