"""End-to-end speed of OPS on one GPU: inference FPS (official protocol) and training step time.

    python benchmarks/bench_e2e.py --config configs/ops-t_r50_704x256_8f_12e.py --out docs/e2e.md

Inference follows the official timing protocol (spec 8.4): batch 1, 704x256, 6 cameras x 8 frames,
online mode (the backbone sees the 6 current images, history features come from the cache),
`cuda.synchronize` around the model call, GPU->CPU copy of the result included, warm-up excluded.
Training: one optimizer step (forward, backward, clip, AdamW) of batch 1 with 8 frames and a
ground truth of about 90k occupied voxels, as the environment notes' measurement of the original.

Two modes are measured in the same run, on the same random weights and inputs:
* faithful: what the original computes: fp32 everywhere except the backbone in training (fp16
  autocast with the static loss scale), the CUDA sampling op in fp32.
* fast: backbone + FPN under bf16 autocast (inference too); at inference the decoder is replayed
  from a CUDA graph (removes the CPU launch overhead of ~600 small kernels); the decoder stays fp32.
The fast mode's predictions are compared with the faithful ones (voxel agreement).
Image content does not change the speed, so images are random; the camera rig is the nuScenes
rig of the synthetic world (tools/synthetic/calib.py), so sampling points land in the images as
they would on real data.
"""
import argparse
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tools.synthetic import calib  # noqa: E402

NUM_VIEWS = 6


def lidar2img_rig(num_frames, height=256, width=704, metres_per_frame=2.5):
    """[T*6, 4, 4] current-LiDAR -> pixel matrices of the test-time 704x256 crop (spec 6.5).

    Frame t is t * 0.5 s old; the ego drove `metres_per_frame` forward per frame.
    """
    lidar2ego = np.eye(4)
    lidar2ego[:3, :3], lidar2ego[:3, 3] = calib.lidar_rotation(), calib.lidar_translation()
    scale = 0.44  # 1600x900 -> 704x396, then rows 140..396 are kept
    mats = []
    for t in range(num_frames):
        past_ego_to_current = np.eye(4)
        past_ego_to_current[0, 3] = -metres_per_frame * t
        for name in calib.CAMERA_NAMES:
            cam2ego = np.eye(4)
            cam2ego[:3, :3], cam2ego[:3, 3] = calib.camera_rotation(name), calib.camera_translation(name)
            cam2lidar = np.linalg.inv(lidar2ego) @ past_ego_to_current @ cam2ego
            k = np.eye(4)
            k[:3, :3] = calib.camera_intrinsic(name, scale)
            k[1, 2] -= 396 - height
            mats.append((k @ np.linalg.inv(cam2lidar)).astype(np.float32))
    return np.stack(mats), np.linalg.inv(lidar2ego).astype(np.float32)


def make_metas(frame_ids, lidar2img, ego2lidar, height=256, width=704):
    """img_metas of one sample whose T frames are the global frame numbers `frame_ids`."""
    filenames = [f'frame{f:06d}_{name}.jpg' for f in frame_ids for name in calib.CAMERA_NAMES]
    return dict(filename=filenames, lidar2img=list(lidar2img), ego2lidar=ego2lidar,
                img_timestamp=[0.5 * f for f in frame_ids for _ in range(NUM_VIEWS)],
                ori_shape=[(height, width, 3)] * len(filenames), img_shape=[(height, width, 3)] * len(filenames),
                pad_shape=[(height, width, 3)] * len(filenames))


def random_occupancy(num_occupied, generator):
    """uint8 [1, 200, 200, 16] labels with ~num_occupied non-free voxels, half of them camera-visible."""
    sem = torch.full((200 * 200 * 16,), 17, dtype=torch.uint8)
    idx = torch.randperm(sem.numel(), generator=generator)[:num_occupied]
    sem[idx] = torch.randint(0, 17, (num_occupied,), generator=generator, dtype=torch.uint8)
    mask = torch.rand(sem.numel(), generator=generator) < 0.5
    return sem.view(1, 200, 200, 16), mask.view(1, 200, 200, 16)


def build_model(cfg_path, device, fast):
    from mmdet.models import build_detector
    from engine.config import load_config
    import models  # noqa: F401
    cfg = load_config(cfg_path)
    torch.manual_seed(0)
    np.random.seed(0)
    model = build_detector(cfg.model)
    model.init_weights()
    # Random weights predict nothing (the classifier bias starts at -4.6, spec 3.4), which would make
    # post-processing free and the agreement check empty: start every layer's classifier at +0.2 so
    # most points pass the 0.5 threshold, the post-processing's worst case.
    for layer in model.pts_bbox_head.transformer.decoder.decoder_layers:
        torch.nn.init.constant_(layer.cls_branch[-1].bias, 0.2)
    model = model.to(device)
    if fast:
        model.amp_dtype = torch.bfloat16
        model.pts_bbox_head.transformer.decoder.use_cuda_graph = True
    return model, cfg


def cuda_time(fn, warmup, iters):
    """Median milliseconds of fn() over `iters` runs after `warmup`, each bracketed by synchronize."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1000)
    return float(np.median(times)), times


def bench_inference(model, num_frames, samples, warmup):
    """Online-mode inference over a stream of samples; returns (median ms, predictions of each sample)."""
    lidar2img, ego2lidar = lidar2img_rig(num_frames)
    device = next(model.parameters()).device
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (samples + warmup + num_frames, 1, NUM_VIEWS, 3, 256, 704), generator=g,
                           dtype=torch.uint8)
    model.eval()
    model.online = True
    preds, times = [], []
    # the first num_frames samples only fill the cache with history features (not timed)
    for i in range(samples + warmup + num_frames):
        frame_ids = [max(i - t, 0) for t in range(num_frames)]
        metas = make_metas(frame_ids, lidar2img, ego2lidar)
        img = images[i].to(device, non_blocking=True)
        torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.no_grad():
            result = model(return_loss=False, rescale=True, img=[img], img_metas=[[metas]])
        torch.cuda.synchronize()
        if i >= num_frames + warmup:
            times.append((time.perf_counter() - start) * 1000)
            preds.append(result[0])
    return float(np.median(times)), preds


def bench_train(model, cfg, num_frames, iters, warmup, fast):
    """Median ms of one training step and the peak memory (GiB)."""
    from mmcv.runner import build_optimizer
    device = next(model.parameters()).device
    lidar2img, ego2lidar = lidar2img_rig(num_frames)
    g = torch.Generator().manual_seed(2)
    img = torch.randint(0, 256, (1, num_frames * NUM_VIEWS, 3, 256, 704), generator=g, dtype=torch.uint8).to(device)
    sem, mask = random_occupancy(91198, g)
    sem, mask = sem.to(device), mask.to(device)
    metas = [make_metas(list(range(num_frames)), lidar2img, ego2lidar)]
    model.train()
    optimizer = build_optimizer(model, cfg.optimizer)
    scaler = torch.amp.GradScaler('cuda', init_scale=512.0, enabled=not fast)
    model.fp16_enabled = not fast  # faithful: fp16 autocast backbone as Fp16OptimizerHook sets it

    def step():
        optimizer.zero_grad(set_to_none=True)
        losses = model(img=img, img_metas=metas, voxel_semantics=sem, mask_camera=mask, return_loss=True)
        loss = sum(v for k, v in losses.items() if 'loss' in k)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 35)
        scaler.step(optimizer)
        scaler.update(512.0)

    torch.cuda.reset_peak_memory_stats()
    ms, _ = cuda_time(step, warmup, iters)
    return ms, torch.cuda.max_memory_allocated() / 2 ** 30


def voxel_agreement(preds_a, preds_b):
    """Fraction of voxels (occupied in either) with the same label, over all samples; and IoU of occupancy."""
    same, union, inter = 0, 0, 0
    for a, b in zip(preds_a, preds_b):
        da = {tuple(l): s for l, s in zip(a['occ_loc'].tolist(), a['sem_pred'].tolist())}
        db = {tuple(l): s for l, s in zip(b['occ_loc'].tolist(), b['sem_pred'].tolist())}
        keys = set(da) | set(db)
        union += len(keys)
        inter += len(set(da) & set(db))
        same += sum(1 for k in keys if da.get(k) == db.get(k))
    return same / max(union, 1), inter / max(union, 1)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--config', default='configs/ops-t_r50_704x256_8f_12e.py')
    parser.add_argument('--samples', type=int, default=100)
    parser.add_argument('--warmup', type=int, default=10)
    parser.add_argument('--train-iters', type=int, default=20)
    parser.add_argument('--out', help='also write the table (markdown) here')
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit('bench_e2e.py needs a CUDA GPU')
    device = torch.device('cuda')
    torch.backends.cudnn.benchmark = True
    rows, preds = [], {}
    for mode in ('faithful', 'fast'):
        fast = mode == 'fast'
        model, cfg = build_model(args.config, device, fast)
        num_frames = cfg.num_frames
        infer_ms, preds[mode] = bench_inference(model, num_frames, args.samples, args.warmup)
        train_ms, peak = bench_train(model, cfg, num_frames, args.train_iters, 3, fast)
        rows.append((mode, infer_ms, 1000.0 / infer_ms, train_ms, peak))
        del model
        torch.cuda.empty_cache()
    agree, occ_iou = voxel_agreement(preds['faithful'], preds['fast'])
    base = rows[0]
    lines = [f'# OPS end-to-end on {torch.cuda.get_device_name()} (torch {torch.__version__})', '',
             f'config `{args.config}`, {args.samples} timed inference samples after {args.warmup} warm-up, '
             f'{args.train_iters} timed training steps', '',
             '| mode | inference ms | FPS | vs faithful | vs original (22.2 FPS, environment.md) | '
             'train step ms | vs faithful | vs original (270 ms) | peak GiB |',
             '|---|---|---|---|---|---|---|---|---|']
    for mode, ims, fps, tms, peak in rows:
        lines.append(f'| {mode} | {ims:.1f} | {fps:.1f} | {base[1] / ims:.2f}x | {fps / 22.2:.2f}x | '
                     f'{tms:.0f} | {base[3] / tms:.2f}x | {270 / tms:.2f}x | {peak:.1f} |')
    lines += ['', f'fast vs faithful predictions: {agree * 100:.2f}% of voxels (occupied in either) have the '
                  f'same label; occupancy IoU {occ_iou * 100:.2f}%']
    text = '\n'.join(lines)
    print(text)
    if args.out:
        with open(args.out, 'w') as f:
            f.write(text + '\n')


if __name__ == '__main__':
    main()
