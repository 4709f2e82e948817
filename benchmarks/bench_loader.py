"""Data-loader throughput on real-size input: the train pipeline of a config on real 1600x900 nuScenes JPEGs.

    python benchmarks/bench_loader.py                                   # CPU decode, workers 0 1 2 4 8
    python benchmarks/bench_loader.py --workers 0 1 2 4 8 16 --batch 1 --rounds 3 --out loader.md
    python benchmarks/bench_loader.py --decode gpu --device cuda        # GPU decode path (nvJPEG)

Input: the six camera images of the one real keyframe in ../shared/data/nuscenes-keyframe (mmdet3d
"info v1.1" pickle for the calibration) and the real Occ3D grid ../shared/data/occ3d-sample/labels.npz.
A temporary folder (removed at the end, never inside the repository) gets an info pickle in
gen_sweep_info.py's format with `--num-samples` key frames of one scene, every key frame and every
camera sweep pointing at the same six images (real calibration), and a labels.npz link per key
frame. Sample 0 of a scene has no history (its past frames would be copies, not decoded), so the
benchmark reads samples 1..: every sample decodes 8 frames x 6 cameras = 48 JPEGs of 1600x900.
The files are read from the page cache after the first pass (no disk I/O measured).

Measured:
* per-stage time of one sample in this process (median over `--stage-reps`): every pipeline step
  (the two loading steps decode the 6 + 42 JPEGs, RandomTransformImage resizes/crops/flips 48), the
  dataset's info assembly, and mmcv's collate of a batch of 1 / 2 / 4 / 8 samples;
* samples/s of the real loader (NuScenesOccDataset + loaders.builder.build_dataloader: mmcv collate,
  torch DataLoader with W workers, persistent) for every W of `--workers`: one warm-up round, then
  `--rounds` rounds of `--samples-per-round` samples (default max(4, 2 W) batches); median and
  min-max over rounds;
* workers needed: ceil(rate / samples/s of one worker) for the `--rates` (samples/s per GPU) and
  for the `--target BATCH:STEP_MS` step rates (default 1:125 = the fast training step, 8 samples/s).
  A worker runs on its own core: the count is also the number of free cores it needs.

`--decode gpu`: the GPU decode path (loaders/pipelines/gpu_decode.py + models/gpu_image_decode.py):
the loader only reads the JPEG bytes and draws the augmentation; `decode_and_transform` decodes
(nvJPEG) and resizes/crops/flips on `--device`. Reported in addition: the device time of decode and
of resize/crop/flip per sample and per batch (cuda-synchronised), loader + device samples/s in one
loop (what a training process would see, without the model), and the check against the CPU path on
the same random draw (mean / max abs difference of the uint8 images, lidar2img equality).
`--device cpu` runs the device step on the CPU (torchvision's libjpeg-turbo), for testing.
"""
import argparse
import math
import os
import os.path as osp
import pickle
import platform
import shutil
import statistics
import sys
import tempfile
import time

import numpy as np

REPO_ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

import torch  # noqa: E402

from benchmarks.report import print_report  # noqa: E402

SHARED_DATA = osp.normpath(osp.join(REPO_ROOT, '..', 'shared', 'data'))
CAMERAS = ('CAM_FRONT', 'CAM_FRONT_RIGHT', 'CAM_FRONT_LEFT', 'CAM_BACK', 'CAM_BACK_LEFT', 'CAM_BACK_RIGHT')
SCENE = 'scene-bench'


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--config', default=osp.join(REPO_ROOT, 'configs', '_base_', 'ops_r50_704x256_8f.py'))
    p.add_argument('--keyframe-dir', default=osp.join(SHARED_DATA, 'nuscenes-keyframe'))
    p.add_argument('--labels', default=osp.join(SHARED_DATA, 'occ3d-sample', 'labels.npz'))
    p.add_argument('--workers', type=int, nargs='+', default=[0, 1, 2, 4, 8])
    p.add_argument('--batch', type=int, default=1, help='samples per batch of the throughput loader')
    p.add_argument('--rounds', type=int, default=3, help='timed rounds per worker count (after one warm-up round)')
    p.add_argument('--samples-per-round', type=int, default=None,
                   help='default: batch x max(4, 2 x workers)')
    p.add_argument('--stage-reps', type=int, default=3, help='repetitions of the per-stage timing')
    p.add_argument('--collate-batches', type=int, nargs='+', default=[1, 2, 4, 8])
    p.add_argument('--rates', type=float, nargs='+', default=[4, 8, 16, 32],
                   help='samples/s per GPU to report the needed workers for')
    p.add_argument('--target', nargs='+', default=['1:125'],
                   help='BATCH:STEP_MS training step rates (per GPU) to report the needed workers for')
    p.add_argument('--decode', choices=('cpu', 'gpu'), default='cpu')
    p.add_argument('--device', default='cuda', help='device of the --decode gpu step (cuda, or cpu for testing)')
    p.add_argument('--num-samples', type=int, default=None, help='key frames in the temporary scene')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--out', default=None, help='also write the markdown report here')
    return p.parse_args(argv)


# ---------------------------------------------------------------------------------- the temporary scene
def _quaternion(rot):
    """3x3 (float32-rounded) rotation -> unit quaternion [w, x, y, z] of the nearest rotation."""
    u, _, vt = np.linalg.svd(np.asarray(rot, dtype=np.float64))
    r = u @ vt
    if np.linalg.det(r) < 0:
        u[:, -1] *= -1
        r = u @ vt
    # the eigenvector of the 4x4 symmetric matrix (Bar-Itzhack), robust for every angle
    k = np.array([
        [r[0, 0] - r[1, 1] - r[2, 2], r[1, 0] + r[0, 1], r[2, 0] + r[0, 2], r[2, 1] - r[1, 2]],
        [r[1, 0] + r[0, 1], r[1, 1] - r[0, 0] - r[2, 2], r[2, 1] + r[1, 2], r[0, 2] - r[2, 0]],
        [r[2, 0] + r[0, 2], r[2, 1] + r[1, 2], r[2, 2] - r[0, 0] - r[1, 1], r[1, 0] - r[0, 1]],
        [r[2, 1] - r[1, 2], r[0, 2] - r[2, 0], r[1, 0] - r[0, 1], r[0, 0] + r[1, 1] + r[2, 2]]]) / 3.0
    vals, vecs = np.linalg.eigh(k)
    x, y, z, w = vecs[:, np.argmax(vals)]
    q = np.array([w, x, y, z])
    return q if q[0] >= 0 else -q


def _timestamp_us(path):
    return int(osp.basename(path).split('__')[-1].split('.')[0])


def build_scene(root, keyframe_dir, labels, num_samples):
    """Write `root/infos.pkl` (gen_sweep_info.py format) and `root/gts/...` links; return the pickle path."""
    pkl = [f for f in os.listdir(keyframe_dir) if f.endswith('.pkl')]
    if len(pkl) != 1:
        raise FileNotFoundError(f'{keyframe_dir}: expected one mmdet3d info pickle, found {pkl}')
    with open(osp.join(keyframe_dir, pkl[0]), 'rb') as f:
        info = pickle.load(f)['data_list'][0]
    e2g = np.asarray(info['ego2global'], dtype=np.float64)
    l2e = np.asarray(info['lidar_points']['lidar2ego'], dtype=np.float64)
    lidar2global = e2g @ l2e
    cams, sweep = {}, {}
    for cam in CAMERAS:
        im = info['images'][cam]
        path = osp.join(keyframe_dir, im['img_path'])
        if not osp.isfile(path):
            raise FileNotFoundError(f'{path} (the keyframe images of ../shared/data/nuscenes-keyframe)')
        cam2lidar = np.linalg.inv(np.asarray(im['lidar2cam'], dtype=np.float64))
        cam2global = lidar2global @ cam2lidar
        common = dict(data_path=path, timestamp=_timestamp_us(path),
                      cam_intrinsic=np.asarray(im['cam2img'], dtype=np.float64),
                      sensor2global_rotation=cam2global[:3, :3].T, sensor2global_translation=cam2global[:3, 3])
        cams[cam] = dict(common, type=cam, sensor2lidar_rotation=cam2lidar[:3, :3],
                         sensor2lidar_translation=cam2lidar[:3, 3])
        sweep[cam] = dict(common)
    if not osp.isfile(labels):
        raise FileNotFoundError(f'{labels} (the Occ3D grid of ../shared/data/occ3d-sample)')
    t0 = int(round(info['timestamp'] * 1e6))
    infos = []
    for i in range(num_samples):
        token = f'bench{i:05d}'
        occ = osp.join(root, 'gts', SCENE, token, 'labels.npz')
        os.makedirs(osp.dirname(occ), exist_ok=True)
        os.symlink(osp.abspath(labels), occ)
        infos.append(dict(
            token=token, scene_name=SCENE, scene_token='bench', timestamp=t0 + 500000 * i,
            lidar_path=osp.join(keyframe_dir, info['lidar_points']['lidar_path']), occ_path=occ,
            lidar2ego_translation=l2e[:3, 3].tolist(), lidar2ego_rotation=_quaternion(l2e[:3, :3]).tolist(),
            ego2global_translation=e2g[:3, 3].tolist(), ego2global_rotation=_quaternion(e2g[:3, :3]).tolist(),
            cams=cams, cam_sweeps=[] if i == 0 else [sweep] * 5, lidar_sweeps=[]))
    ann_file = osp.join(root, 'infos.pkl')
    with open(ann_file, 'wb') as f:
        pickle.dump(dict(infos=infos, metadata=dict(version='bench')), f)
    return ann_file


def make_dataset(cfg, ann_file, root, decode):
    from mmdet.datasets import build_dataset

    from loaders.pipelines import gpu_decode_pipeline
    pipeline = [dict(step) for step in cfg.train_pipeline]
    for step in pipeline:
        if step['type'] == 'LoadOccFromFile':
            step['occ_root'] = osp.join(root, 'gts')
    if decode == 'gpu':
        pipeline = gpu_decode_pipeline(pipeline)
    ds_cfg = dict(cfg.data.train)
    ds_cfg.update(ann_file=ann_file, pipeline=pipeline, data_root=root, occ_root=osp.join(root, 'gts'))
    return build_dataset(ds_cfg)


# ---------------------------------------------------------------------------------- measurements
def machine_info(device):
    model = platform.processor() or platform.machine()
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    model = line.split(':', 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    mem = ''
    try:
        with open('/proc/meminfo') as f:
            mem = f'{int(f.readline().split()[1]) / 2 ** 20:.0f} GiB RAM'
    except (OSError, ValueError, IndexError):
        pass
    import PIL
    import torchvision

    from loaders.pipelines.image_io import turbojpeg_decoder
    decoder = 'pyturbojpeg' if turbojpeg_decoder() is not None else 'OpenCV'
    lines = [f'CPU: {model}, {os.cpu_count()} logical cores ({usable} usable by this process), {mem}',
             f'load average at start: {" ".join(f"{v:.2f}" for v in os.getloadavg())}',
             f'torch {torch.__version__}, torchvision {torchvision.__version__}, Pillow {PIL.__version__}, '
             f'CPU JPEG decoder of the loaders: {decoder}, Python {platform.python_version()}']
    if str(device).startswith('cuda') and torch.cuda.is_available():
        lines.append(f'GPU: {torch.cuda.get_device_name(torch.device(device))}, CUDA {torch.version.cuda}')
    return lines


def stage_times(dataset, index, reps, collate_batches):
    """{stage name: median seconds} for one sample in this process, and the collate time per batch size."""
    from mmcv.parallel import collate
    times = {}
    sample = None

    def clock():
        return time.perf_counter(), time.process_time()

    def add(name, start):
        wall, cpu = clock()
        times.setdefault(name, []).append((wall - start[0], cpu - start[1]))

    for _ in range(reps):
        np.random.seed(index)
        t = clock()
        results = dataset.get_data_info(index)
        if hasattr(dataset, 'pre_pipeline'):
            dataset.pre_pipeline(results)
        add('dataset info (get_data_info)', t)
        for step in dataset.pipeline.transforms:
            t = clock()
            results = step(results)
            add(type(step).__name__, t)
        sample = results
    for b in collate_batches:
        batch = [sample] * b
        for _ in range(reps):
            t = clock()
            collate(batch, samples_per_gpu=b)
            add(f'collate {b}', t)
    med = {k: (statistics.median(w for w, _ in v), statistics.median(c for _, c in v)) for k, v in times.items()}
    coll = {b: med.pop(f'collate {b}') for b in collate_batches}
    return med, coll, sample


def throughput(dataset, indices, workers, batch, rounds, samples_per_round, on_batch=None):
    """samples/s of each round (after a warm-up round) of the real loader over `indices`."""
    from torch.utils.data import Subset

    from loaders.builder import build_dataloader
    n = samples_per_round or batch * max(4, 2 * workers)
    n = max(batch, n // batch * batch)
    subset = Subset(dataset, list(indices[:n]))
    extra = dict(persistent_workers=True, prefetch_factor=2) if workers > 0 else {}
    loader = build_dataloader(subset, samples_per_gpu=batch, workers_per_gpu=workers, shuffle=False, seed=0,
                              **extra)
    rates = []
    for r in range(rounds + 1):
        t = time.perf_counter()
        count = 0
        for data in loader:
            if on_batch is not None:
                on_batch(data)
            count += batch
        dt = time.perf_counter() - t
        if r > 0:
            rates.append(count / dt)
    del loader
    return rates, n


def fmt_rate(rates):
    med = statistics.median(rates)
    return f'{med:.2f} ({min(rates):.2f}-{max(rates):.2f})'


def needed_workers(rate, per_worker):
    return math.ceil(rate / per_worker - 1e-9) if per_worker > 0 else float('inf')


def device_times(batch_items, device, reps):
    """Median seconds of decode and of resize/crop/flip(/rotate) for a list of `img_jpeg` entries on `device`."""
    from models.gpu_image_decode import decode_jpegs, resize_crop_flip_rotate, split_jpeg_item

    def sync():
        if device.type == 'cuda':
            torch.cuda.synchronize(device)

    dec, tr, cpu = [], [], []
    for _ in range(reps):
        sync()
        t, c = time.perf_counter(), time.process_time()
        decoded = [decode_jpegs(split_jpeg_item(item), device) for item in batch_items]
        sync()
        t1, c1 = time.perf_counter(), time.process_time()
        for item, imgs in zip(batch_items, decoded):
            resize_crop_flip_rotate(torch.stack(imgs), item['resize_dims'], item['crop'], item['flip'],
                                    item['rotate']).flip(1)
        sync()
        t2 = time.perf_counter()
        dec.append(t1 - t)
        tr.append(t2 - t1)
        cpu.append(c1 - c)
        del decoded
    return statistics.median(dec), statistics.median(tr), statistics.median(cpu)


def compare_paths(cfg, ann_file, root, index, device):
    """CPU pipeline vs GPU decode path on the same random draw: (mean abs, max abs, lidar2img equal)."""
    from models.gpu_image_decode import decode_and_transform
    cpu_ds = make_dataset(cfg, ann_file, root, 'cpu')
    gpu_ds = make_dataset(cfg, ann_file, root, 'gpu')
    np.random.seed(1234)
    ref = cpu_ds[index]
    np.random.seed(1234)
    dev = gpu_ds[index]
    img_ref = ref['img'].data.numpy().astype(np.int16)
    img_dev = decode_and_transform([dev['img_jpeg'].data], device)[0].cpu().numpy().astype(np.int16)
    diff = np.abs(img_ref - img_dev)
    same_geometry = all(np.array_equal(a, b) for a, b in zip(ref['img_metas'].data['lidar2img'],
                                                             dev['img_metas'].data['lidar2img']))
    return float(diff.mean()), int(diff.max()), float(np.percentile(diff, 99.9)), same_geometry


def main(argv=None):
    args = parse_args(argv)
    import warnings
    warnings.filterwarnings('ignore')
    from mmcv import Config

    import loaders  # noqa: F401  (registers the dataset and pipeline steps)
    device = torch.device(args.device) if args.decode == 'gpu' else torch.device('cpu')
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise SystemExit('--decode gpu --device cuda needs a CUDA GPU; use --device cpu to test the path on the CPU')
    torch.set_num_threads(1)  # as in a DataLoader worker; the main-process numbers are then per core
    cfg = Config.fromfile(args.config)
    max_round = args.samples_per_round or args.batch * max(4, 2 * max(args.workers))
    num_samples = args.num_samples or max_round + 2
    root = tempfile.mkdtemp(prefix='ops_bench_loader_')
    out = []
    try:
        ann_file = build_scene(root, args.keyframe_dir, args.labels, num_samples)
        dataset = make_dataset(cfg, ann_file, root, args.decode)
        indices = list(range(1, len(dataset)))  # sample 0 has no history (copies instead of decoding)
        out.append(f'# Data loader benchmark ({args.decode} decode)')
        out.append('')
        out.append('```')
        out.append(f'python benchmarks/bench_loader.py {" ".join(argv if argv is not None else sys.argv[1:])}'.rstrip())
        out.append('```')
        out.append('')
        out += [f'* {line}' for line in machine_info(device)]
        args.collate_batches = sorted(set(args.collate_batches) | {args.batch})
        stages, coll, sample = stage_times(dataset, indices[-1], args.stage_reps, args.collate_batches)
        if args.decode == 'cpu':
            num_views = int(sample['img'].data.shape[0])
            shape = tuple(sample['img'].data.shape)
        else:
            num_views = len(sample['img_jpeg'].data['offsets']) - 1
            shape = (num_views, 'JPEG bytes', int(sample['img_jpeg'].data['data'].numel()))
        out.append(f'* config {osp.relpath(args.config, REPO_ROOT)}, train pipeline; {num_views} images of 1600x900 '
                   f'per sample -> img {shape}')
        out.append('')
        out.append('Per-stage time of one sample (this process, one thread, median of '
                   f'{args.stage_reps}; CPU = process CPU time, less sensitive to other jobs than wall time):')
        out.append('')
        out.append('| stage | wall ms | CPU ms |')
        out.append('|---|---|---|')
        for name, (wall, cpu) in stages.items():
            out.append(f'| {name} | {wall * 1e3:.1f} | {cpu * 1e3:.1f} |')
        total_wall = sum(w for w, _ in stages.values())
        total_cpu = sum(c for _, c in stages.values())
        out.append(f'| **pipeline total** | **{total_wall * 1e3:.1f}** | **{total_cpu * 1e3:.1f}** |')
        for b, (wall, cpu) in coll.items():
            out.append(f'| mmcv collate, batch {b} (per batch) | {wall * 1e3:.1f} | {cpu * 1e3:.1f} |')
        out.append('')
        # CPU seconds one sample costs a worker at the benchmark's batch size
        collate_cpu = coll[args.batch][1] / args.batch if args.batch in coll else 0.0
        per_core = 1.0 / (total_cpu + collate_cpu)

        on_batch = None
        if args.decode == 'gpu':
            from models.gpu_image_decode import decode_and_transform

            def on_batch(data):  # noqa: F811
                items = data['img_jpeg'].data[0]
                img = decode_and_transform(items, device)
                if device.type == 'cuda':
                    torch.cuda.synchronize(device)
                return img

        rows, per_worker = [], None
        for w in args.workers:
            rates, n = throughput(dataset, indices, w, args.batch, args.rounds, args.samples_per_round)
            row = [str(w), str(n), fmt_rate(rates)]
            if args.decode == 'gpu':
                rates_dev, _ = throughput(dataset, indices, w, args.batch, args.rounds, args.samples_per_round,
                                          on_batch=on_batch)
                row.append(fmt_rate(rates_dev))
            med = statistics.median(rates)
            row.append(f'{med / max(w, 1):.2f}')
            rows.append(row)
            if w == 1 or (w == 0 and per_worker is None):
                per_worker = med
            print(f'workers {w}: {fmt_rate(rates)} samples/s', file=sys.stderr, flush=True)
        out.append(f'Loader throughput (batch {args.batch}; samples/s, median (min-max) of {args.rounds} rounds '
                   f'after a warm-up round):')
        out.append('')
        head = ['workers', 'samples/round', 'samples/s']
        if args.decode == 'gpu':
            head.append(f'samples/s incl. decode_and_transform on {device.type}')
        head.append('samples/s per worker')
        out.append('| ' + ' | '.join(head) + ' |')
        out.append('|' + '---|' * len(head))
        out += ['| ' + ' | '.join(r) + ' |' for r in rows]
        out.append('')
        cores = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()
        out.append(f'Workers needed = ceil(rate / rate of one worker), from the measured one-worker loader rate '
                   f'({per_worker:.2f} samples/s; workers=1, else 0) and from the CPU time of one sample '
                   f'(pipeline + collate share: {1e3 / per_core:.0f} ms, i.e. {per_core:.2f} samples/s per core). '
                   f'A worker needs its own core, so these are also free cores per GPU (this machine: {cores}); '
                   f'counts above the core count are extrapolated.')
        out.append('')
        out.append('| per-GPU rate | samples/s | workers needed (1-worker loader rate) | workers needed (CPU time) |')
        out.append('|---|---|---|---|')
        targets = []
        for t in args.target:
            b, ms = t.split(':')
            targets.append((f'batch {int(b)} at {float(ms):g} ms/step', int(b) * 1000.0 / float(ms)))
        targets += [(f'{r:g} samples/s', r) for r in args.rates]
        for name, rate in targets:
            out.append(f'| {name} | {rate:.1f} | {needed_workers(rate, per_worker)} | '
                       f'{needed_workers(rate, per_core)} |')
        out.append('')

        if args.decode == 'gpu':
            from mmcv.parallel import collate
            out.append(f'Device step (`decode_and_transform` parts on {device}, median of {args.stage_reps}):')
            out.append('')
            out.append('| batch | decode ms | (host CPU ms during decode) | resize/crop/flip ms | total ms | '
                       'ms per sample | samples/s |')
            out.append('|---|---|---|---|---|---|---|')
            for b in args.collate_batches:
                items = collate([sample] * b, samples_per_gpu=b)['img_jpeg'].data[0]
                device_times(items, device, 1)  # warm-up (nvJPEG handles, kernels)
                dec, tr, cpu = device_times(items, device, args.stage_reps)
                out.append(f'| {b} | {dec * 1e3:.1f} | {cpu * 1e3:.1f} | {tr * 1e3:.1f} | {(dec + tr) * 1e3:.1f} | '
                           f'{(dec + tr) * 1e3 / b:.1f} | {b / (dec + tr):.1f} |')
            out.append('')
            mean, mx, p999, same = compare_paths(cfg, ann_file, root, indices[-1], device)
            out.append(f'Check against the CPU path (same random draw, {num_views} images): mean abs difference '
                       f'{mean:.3f} grey levels, 99.9th percentile {p999:.0f}, max {mx}; lidar2img identical: {same}.')
            out.append('')
        out.append(f'Load average at the end: {" ".join(f"{v:.2f}" for v in os.getloadavg())}')
        print_report(out, args.out)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == '__main__':
    main()
