"""Generate the synthetic test world in the nuScenes + Occ3D on-disk layout.

    python tools/make_synthetic_nuscenes.py --out data/synthetic
    python gen_sweep_info.py --data-root data/synthetic --version v1.0-mini

Writes <out>/v1.0-mini/*.json (readable by nuscenes-devkit's NuScenes class), six camera JPEGs per
key frame (samples/CAM_*) and per camera sweep (sweeps/CAM_*), a LiDAR scan per key frame
(samples/LIDAR_TOP/*.pcd.bin) and per LiDAR sweep (sweeps/LIDAR_TOP, with --lidar-sweeps), a
driveable-area map per scene (maps/*.png) and the Occ3D labels
(gts/<scene>/<sample_token>/labels.npz). Scene names come from the nuScenes mini split, so the
devkit's split lists divide the scenes into train and val. `--benchmark nuscenes-occupancy` also writes the
nuScenes-Occupancy labels (occupancy/scene_<scene_token>/occupancy/<lidar_token>.npy, 0.2 m voxels in the LiDAR
frame: tools/synthetic/nusc_occupancy.py).

This is a test world rendered from simple 3D shapes, deterministic from --seed; see docs/data.md.
"""
import argparse
import json
import multiprocessing
import os
import os.path as osp
import shutil
import sys
import time

import numpy as np

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

from tools.synthetic import calib, nusc_occupancy, writer  # noqa: E402
from tools.synthetic.world import FREE  # noqa: E402

# label layouts the world can be written in (core/benchmarks/); the Occ3D labels are always written
BENCHMARKS = ('occ3d-nuscenes', 'nuscenes-occupancy')


def parse_args(argv=None):
    p = argparse.ArgumentParser(description='Write a synthetic nuScenes + Occ3D world (a test world, not nuScenes)')
    p.add_argument('--out', default='data/synthetic', help='output root (becomes --data-root of gen_sweep_info.py)')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--train-scenes', type=int, default=3,
                   help=f'1..{len(writer.MINI_TRAIN)} (names of the mini train split)')
    p.add_argument('--val-scenes', type=int, default=1, help=f'0..{len(writer.MINI_VAL)} (names of the mini val split)')
    p.add_argument('--keyframes', type=int, default=8, help='key frames (samples, 2 Hz) per scene')
    p.add_argument('--sweeps', type=int, default=5, help='camera sweeps between key frames (5 = 12 Hz as nuScenes)')
    p.add_argument('--lidar-sweeps', type=int, default=0,
                   help='LiDAR sweeps between key frames (9 = 20 Hz as nuScenes; 0: key-frame scans only)')
    p.add_argument('--scale', type=float, default=0.25, help='image size as a fraction of 1600x900 (0.25 -> 400x225)')
    p.add_argument('--jpeg-quality', type=int, default=92)
    p.add_argument('--workers', type=int, default=2, help='processes rendering frames in parallel')
    p.add_argument('--force', action='store_true', help='delete --out first if it exists')
    p.add_argument('--skip-if-exists', action='store_true',
                   help='do nothing when --out already holds a complete world generated with the same arguments')
    p.add_argument('--benchmark', default='occ3d-nuscenes', choices=BENCHMARKS,
                   help='whose labels to write: occ3d-nuscenes (gts/), or nuscenes-occupancy (occupancy/, '
                        'besides gts/)')
    p.add_argument('--quiet', action='store_true')
    return p.parse_args(argv)


def check_args(args):
    if not 1 <= args.train_scenes <= len(writer.MINI_TRAIN):
        raise SystemExit(f'--train-scenes must be in 1..{len(writer.MINI_TRAIN)} (the mini train split has '
                         f'{len(writer.MINI_TRAIN)} scene names), got {args.train_scenes}')
    if not 0 <= args.val_scenes <= len(writer.MINI_VAL):
        raise SystemExit(f'--val-scenes must be in 0..{len(writer.MINI_VAL)}, got {args.val_scenes}')
    if args.keyframes < 1:
        raise SystemExit(f'--keyframes must be >= 1, got {args.keyframes}')
    if args.sweeps < 0:
        raise SystemExit(f'--sweeps must be >= 0, got {args.sweeps}')
    if args.lidar_sweeps < 0:
        raise SystemExit(f'--lidar-sweeps must be >= 0, got {args.lidar_sweeps}')
    if not 0.01 <= args.scale <= 1.0:
        raise SystemExit(f'--scale must be in [0.01, 1], got {args.scale}')
    if args.workers < 1:
        raise SystemExit(f'--workers must be >= 1, got {args.workers}')


def make_scenes(args):
    names = writer.MINI_TRAIN[:args.train_scenes] + writer.MINI_VAL[:args.val_scenes]
    scenes = []
    for i, name in enumerate(names):
        rng = np.random.default_rng([args.seed, i, 1])
        scenes.append(writer.SceneConfig(index=i, name=name, seed=args.seed, num_keyframes=args.keyframes,
                                         num_sweeps=args.sweeps, num_lidar_sweeps=args.lidar_sweeps,
                                         scale=args.scale, speed=float(rng.uniform(3.5, 6.5)),
                                         origin=(160.0 + float(rng.uniform(0, 20)), 160.0 + float(rng.uniform(0, 20)))))
    return scenes


PARAMS_FILE = 'synthetic_world.json'  # written last: its presence marks a complete world
WORLD_KEYS = ('seed', 'train_scenes', 'val_scenes', 'keyframes', 'sweeps', 'scale', 'jpeg_quality')


def generate(args):
    """Write the world; returns a summary dict (counts, class histogram, seconds)."""
    check_args(args)
    start = time.time()
    root = args.out
    params = {k: getattr(args, k) for k in WORLD_KEYS}
    if args.lidar_sweeps:   # recorded only when used: worlds written before the flag existed still match
        params['lidar_sweeps'] = args.lidar_sweeps
    if args.benchmark != BENCHMARKS[0]:   # recorded only when not the default, so older worlds stay reusable
        params['benchmark'] = args.benchmark
    if osp.exists(root):
        done = osp.join(root, PARAMS_FILE)
        if args.skip_if_exists and not args.force and osp.isfile(done):
            with open(done) as f:
                existing = json.load(f)
            if existing.get('params') == params:
                existing['skipped'] = True
                return existing
            raise SystemExit(f'{root} holds a synthetic world made with other arguments ({existing.get("params")}); '
                             f'pass --force to regenerate it or choose another --out')
        if not args.force:
            raise SystemExit(f'{root} exists; pass --force to overwrite it or choose another --out')
        shutil.rmtree(root)
    scenes = make_scenes(args)
    for sub in [writer.VERSION, 'maps', f'samples/{writer.LIDAR}'] + \
            [f'sweeps/{writer.LIDAR}'] * bool(args.lidar_sweeps) + \
            [f'{d}/{c}' for d in ('samples', 'sweeps') for c in calib.CAMERA_NAMES]:
        os.makedirs(osp.join(root, sub), exist_ok=True)
    tables = writer.build_tables(scenes)
    for name, records in tables.items():
        with open(osp.join(root, writer.VERSION, f'{name}.json'), 'w') as f:
            json.dump(records, f, indent=1)
    for scene, m in zip(scenes, tables['map']):
        writer.write_map_mask(root, scene, m['token'])
    tasks = [(root, s, k, args.jpeg_quality) for s in scenes for k in range(s.num_keyframes)]
    hist = np.zeros(18, dtype=np.int64)
    n_images = 0
    progress = None
    if not args.quiet:
        from tqdm import tqdm
        progress = tqdm(total=len(tasks), desc='rendering key frames', unit='frame')
    pool = multiprocessing.get_context('fork').Pool(args.workers) if args.workers > 1 else None
    try:
        results = pool.imap_unordered(writer.render_frame, tasks) if pool else map(writer.render_frame, tasks)
        for _, _, n, h in results:
            n_images, hist = n_images + n, hist + h
            if progress:
                progress.update()
        if args.benchmark == 'nuscenes-occupancy':
            nusc_occupancy.write_world_labels(root, scenes, pool)
    finally:
        if pool:
            pool.close()
            pool.join()
    if progress:
        progress.close()
    width, height = calib.image_size(args.scale)
    with open(osp.join(root, 'README_SYNTHETIC.txt'), 'w') as f:
        f.write(writer.README.format(version=writer.VERSION, seed=args.seed, scenes=', '.join(s.name for s in scenes),
                                     keyframes=args.keyframes, sweeps=args.sweeps, width=width, height=height,
                                     scale=args.scale))
    summary = dict(root=root, scenes=[s.name for s in scenes], samples=len(tasks), images=n_images,
                   occupied_voxels=int(hist[:FREE].sum()), class_histogram=hist.tolist(),
                   seconds=round(time.time() - start, 1), params=params)
    with open(osp.join(root, PARAMS_FILE), 'w') as f:
        json.dump(summary, f, indent=1)
    return summary


def main(argv=None):
    args = parse_args(argv)
    summary = generate(args)
    if summary.get('skipped'):
        if not args.quiet:
            print(f'{args.out} already holds this synthetic world; nothing to do (--force regenerates it)')
    elif not args.quiet:
        print(f"wrote {summary['samples']} samples ({summary['images']} images) of scenes {summary['scenes']} "
              f"to {summary['root']} in {summary['seconds']} s")
    return summary


if __name__ == '__main__':
    main()
