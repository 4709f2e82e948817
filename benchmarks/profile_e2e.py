"""Where the time of one OPS-T online inference and one training step goes, on the GPU.

    python benchmarks/profile_e2e.py --config configs/ops-t_r50_704x256_8f_12e.py

Prints per-stage times (backbone, decoder, post-processing; forward, loss, backward) measured with
cuda.synchronize around each stage, then torch.profiler's top operators.
"""
import argparse
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.bench_e2e import build_model, lidar2img_rig, make_metas, random_occupancy  # noqa: E402


def timed(fn, reps=20):
    for _ in range(3):
        out = fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(reps):
        out = fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) * 1000 / reps, out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument('--config', default='configs/ops-t_r50_704x256_8f_12e.py')
    parser.add_argument('--fast', action='store_true')
    args = parser.parse_args()
    device = torch.device('cuda')
    torch.backends.cudnn.benchmark = True
    model, cfg = build_model(args.config, device, args.fast)
    T = cfg.num_frames
    lidar2img, ego2lidar = lidar2img_rig(T)
    metas = [make_metas(list(range(T)), lidar2img, ego2lidar)]
    img_all = torch.randint(0, 256, (1, T * 6, 3, 256, 704), dtype=torch.uint8, device=device)
    head = model.pts_bbox_head
    model.eval()
    with torch.no_grad():
        model.online = False
        t_feat, feats = timed(lambda: model.extract_feat(img_all[:, :6], metas))
        feats = model.extract_feat(img_all, metas)
        t_head, outs = timed(lambda: head(feats, metas))
        t_occ, _ = timed(lambda: head.get_occ(outs, metas))
        print(f'inference stages: backbone+FPN on 6 images {t_feat:.2f} ms, decoder {t_head:.2f} ms, '
              f'post-processing {t_occ:.2f} ms')
        from torch.profiler import ProfilerActivity, profile
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(5):
                o = head(feats, metas)
                head.get_occ(o, metas)
            torch.cuda.synchronize()
        print(prof.key_averages().table(sort_by='cuda_time_total', row_limit=25))
        print(prof.key_averages().table(sort_by='self_cpu_time_total', row_limit=15))

    g = torch.Generator().manual_seed(2)
    sem, mask = random_occupancy(91198, g)
    sem, mask = sem.to(device), mask.to(device)
    model.train()
    model.fp16_enabled = not args.fast

    def fwd_loss():
        return model(img=img_all, img_metas=metas, voxel_semantics=sem, mask_camera=mask, return_loss=True)

    t_fwd, losses = timed(fwd_loss, reps=5)
    loss = sum(v for k, v in losses.items() if 'loss' in k)

    def fwd_bwd():
        model.zero_grad(set_to_none=True)
        ls = fwd_loss()
        sum(v for k, v in ls.items() if 'loss' in k).backward()
    t_step, _ = timed(fwd_bwd, reps=5)
    feats = model.extract_feat(img_all, metas)
    outs = head(feats, metas)
    t_loss, _ = timed(lambda: head.loss(sem, mask, outs), reps=5)
    print(f'training: forward+loss {t_fwd:.1f} ms (loss alone {t_loss:.1f} ms), forward+loss+backward {t_step:.1f} ms')
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]) as prof:
        fwd_bwd()
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by='cuda_time_total', row_limit=25))


if __name__ == '__main__':
    main()
