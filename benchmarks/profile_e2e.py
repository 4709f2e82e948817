"""Where the GPU time of one OPS test step and one training step goes (torch.profiler, on a CUDA GPU).

    python benchmarks/profile_e2e.py --config configs/ops-t_r50_704x256_8f_12e.py [--mode fast] [--out prof.md]

Inference: the eager static test step (the kernels that the CUDA graph of the default path replays),
online, batch 1, 7 cached history frames, on bench_e2e.py's rig. Per stage (backbone, FPN, feature
cache, each decoder part summed over the 6 layers, post-processing) it reports the GPU kernel time
per sample, measured by the profiler, and the top kernels. When the graph replay takes about as
long as the kernel sum, the step is bound by GPU work, not by launches. Then the graph path itself:
wall time per sample against the replay's GPU time, and the host functions taking the difference.

Training: one step of bench_e2e.py's training mode (`--train-mode`, default `--mode`), batch 1: GPU kernel
time of forward + loss, of the whole step, and its wall time, and the top kernels of the step.
"""
import argparse
import os
import sys
import time
from collections import defaultdict

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile, record_function

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.bench_e2e import INFER_MODES, TRAIN_MODES, InferenceStream, TrainBench, build_model, sync  # noqa: E402
from benchmarks.report import print_report  # noqa: E402

ACTIVITIES = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
DECODER_PARTS = ('position_encoder', 'sampling', 'mixing', 'self_attn', 'ffn', 'cls_branch', 'reg_branch')


def annotate(module, name, handles):
    """Wrap every forward of `module` in a profiler range `stage:<name>` (forward hooks)."""
    stack = []

    def enter(*_):
        rf = record_function(f'stage:{name}')
        rf.__enter__()
        stack.append(rf)

    def leave(*_):
        stack.pop().__exit__(None, None, None)

    handles += [module.register_forward_pre_hook(enter), module.register_forward_hook(leave)]


def annotate_stages(model):
    """Profiler ranges around the backbone, the FPN, each decoder part and OPUS-V2's sparse CPD modules (their
    eager forward: a training step's, and the test step's outside the faithful and fast presets, whose test step
    computes the last one on the dense grid); returns the hook handles."""
    handles = []
    annotate(model.img_backbone, 'backbone', handles)
    annotate(model.img_neck, 'FPN', handles)
    for layer in model.pts_bbox_head.transformer.decoder.decoder_layers:
        for part in DECODER_PARTS:
            annotate(getattr(layer, part), f'decoder.{part}', handles)
    for densifier in getattr(model.pts_bbox_head, 'densifiers', ()):
        annotate(densifier, 'CPD modules (sparse)', handles)
    return handles


def stage_table(prof, reps, total):
    """GPU ms per repetition of each `stage:` range (the CPU-side range: the profiler adds a GPU copy)."""
    stages = defaultdict(float)
    for e in prof.events():
        if e.name.startswith('stage:') and e.device_type == torch.autograd.DeviceType.CPU:
            stages[e.name[6:]] += device_us(e) / 1000 / reps
    lines = ['| stage | GPU ms |', '|---|---|']
    for name, ms in sorted(stages.items(), key=lambda kv: -kv[1]):
        lines.append(f'| {name} | {ms:.2f} |')
    lines.append(f'| rest (outside the ranges) | {total - sum(stages.values()):.2f} |')
    return lines


def device_us(evt):
    return getattr(evt, 'device_time_total', None) or getattr(evt, 'cuda_time_total', 0)


def self_device_us(evt):
    return getattr(evt, 'self_device_time_total', None) or getattr(evt, 'self_cuda_time_total', 0)


def is_kernel(evt):
    """A GPU-side event (kernel, memcpy, memset); its launching operator reports the same time again. Not a range's
    span on the GPU timeline (a user annotation such as the optimizer's `Optimizer.step#AdamW.step`, gaps included),
    which would count its kernels twice."""
    return evt.device_type != torch.autograd.DeviceType.CPU and not getattr(evt, 'is_user_annotation', False)


def kernel_table(prof, reps, rows=20):
    """Top operators by self GPU time per repetition (ms), and the total of the GPU-side events."""
    total = sum(device_us(e) for e in prof.events() if is_kernel(e) and not e.name.startswith('stage:')) / 1000 / reps
    events = [e for e in prof.key_averages()
              if not e.key.startswith(('stage:', 'step:')) and not getattr(e, 'is_user_annotation', False)]
    events.sort(key=self_device_us, reverse=True)
    lines = [f'GPU kernel time per repetition: {total:.2f} ms', '',
             '| operator | self GPU ms | calls |', '|---|---|---|']
    for e in events[:rows]:
        if self_device_us(e) == 0:
            break
        lines.append(f'| `{e.key[:70]}` | {self_device_us(e) / 1000 / reps:.3f} | {e.count // reps} |')
    return total, lines


def profile_inference(cfg, mode, state, device, reps=5):
    model = build_model(cfg, device, dict(INFER_MODES[mode], test_cuda_graph=False), state=state)
    stream = InferenceStream(model, cfg.num_frames)
    for _ in range(cfg.num_frames + 3):
        stream.sample()
    eager_ms = float(np.median([stream.sample() for _ in range(10)]))
    handles = annotate_stages(model)
    head = model.pts_bbox_head
    get_occ_grids = head.get_occ_grids

    def annotated_get_occ_grids(outs, **kwargs):
        with record_function('stage:post-processing'):
            return get_occ_grids(outs, **kwargs)
    head.get_occ_grids = annotated_get_occ_grids
    with profile(activities=ACTIVITIES) as prof:
        for _ in range(reps):
            stream.sample()
        sync()
    for h in handles:
        h.remove()
    head.get_occ_grids = get_occ_grids
    total, top = kernel_table(prof, reps, rows=30)
    return ([f'### Inference, mode {mode}: eager step {eager_ms:.1f} ms wall, per sample', '']
            + stage_table(prof, reps, total) + [''] + top + [''])


def profile_graph_host(cfg, mode, state, device, reps=20):
    """The default (graph) path of `mode`: wall time per sample against the GPU time of the replayed
    step (CUDA events around it, input copies included), and where the host time goes (cProfile)."""
    import cProfile
    import io
    import pstats
    model = build_model(cfg, device, INFER_MODES[mode], state=state)
    stream = InferenceStream(model, cfg.num_frames)
    for _ in range(cfg.num_frames + 3):
        stream.sample()
    step, gpu_ms = model.graphed_steps['online_step'], []

    def timed_step(*args, **kwargs):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        out = step(*args, **kwargs)
        end.record()
        gpu_ms.append((start, end))
        return out
    model.graphed_steps['online_step'] = timed_step
    wall = float(np.median([stream.sample() for _ in range(reps)]))
    sync()
    replay = float(np.median([s.elapsed_time(e) for s, e in gpu_ms]))
    model.graphed_steps['online_step'] = step
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(reps):
        stream.sample()
    prof.disable()
    text = io.StringIO()
    pstats.Stats(prof, stream=text).sort_stats('tottime').print_stats(15)
    body = [line for line in text.getvalue().splitlines() if line.strip()][-16:]
    return ([f'### Graph path, mode {mode}: {wall:.2f} ms wall per sample, of which the replayed step '
             f'{replay:.2f} ms on the GPU', '', f'host functions by own time over {reps} samples (cProfile; '
             'its overhead inflates Python calls):', '', '```'] + body + ['```', ''])


def profile_training(cfg, mode, state, device, reps=3):
    bench = TrainBench(cfg, mode, state, 1, device)
    for _ in range(3):
        bench.step()
    wall = bench.timed(5)
    model = bench.model

    def forward_loss():
        return model(img=bench.img, img_metas=[dict(m) for m in bench.metas], voxel_semantics=bench.sem,
                     mask_camera=bench.mask, return_loss=True)
    head = model.pts_bbox_head
    handles = annotate_stages(model)
    head_loss = head.loss

    def annotated_loss(*args, **kwargs):
        with record_function('stage:loss (matching included)'):
            return head_loss(*args, **kwargs)
    head.loss = annotated_loss
    with profile(activities=ACTIVITIES) as prof_fwd:
        for _ in range(reps):
            forward_loss()
        sync()
    for h in handles:
        h.remove()
    head.loss = head_loss
    model.zero_grad(set_to_none=True)
    sync()
    start = time.perf_counter()
    for _ in range(reps):
        forward_loss()
    sync()
    fwd_wall = (time.perf_counter() - start) * 1000 / reps
    with profile(activities=ACTIVITIES) as prof_step:
        for _ in range(reps):
            bench.step()
        sync()
    fwd_gpu, _ = kernel_table(prof_fwd, reps)
    step_gpu, top = kernel_table(prof_step, reps, rows=25)
    images_ms = image_features_ms(model, bench.img.shape[1])
    return ([f'### Training, mode {mode}, batch 1', '',
            '| part | wall ms | GPU kernel ms |', '|---|---|---|',
            f'| forward + loss | {fwd_wall:.1f} | {fwd_gpu:.1f} |',
            f'| whole step | {wall:.1f} | {step_gpu:.1f} |',
            f'| of which backbone + FPN forward and backward ({bench.img.shape[1]} images, measured alone) | '
            f'{images_ms:.1f} | |', '', 'forward + loss by stage:', '']
            + stage_table(prof_fwd, reps, fwd_gpu) + ['', 'whole step:'] + top + [''])


def image_features_ms(model, views, reps=5):
    """Median ms (CUDA events) of the training step's image part alone: backbone + FPN forward on `views`
    normalised 256 x 704 images, with the step's autocast and memory format, and the backward of their features
    (what the step's backward does there, whatever the decoder's gradients are)."""
    device = next(model.parameters()).device
    if device.type != 'cuda':
        return float('nan')
    x = torch.randn(views, 3, 256, 704, device=device)
    times = []
    for i in range(reps + 2):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        feats = model.extract_img_feat(x, model.train_amp_dtype())
        sum(f.float().mean() for f in feats).backward()
        end.record()
        sync()
        if i >= 2:                                   # after cuDNN's choices
            times.append(start.elapsed_time(end))
    model.zero_grad(set_to_none=True)
    return float(np.median(times))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--config', default='configs/ops-t_r50_704x256_8f_12e.py')
    parser.add_argument('--mode', default='faithful', choices=('faithful', 'fast'))
    parser.add_argument('--train-mode', choices=TRAIN_MODES, help="training mode (default: --mode); 'fast' replays "
                        "the decoder from CUDA graphs, whose kernels the stage ranges do not see")
    parser.add_argument('--skip-inference', action='store_true')
    parser.add_argument('--skip-train', action='store_true')
    parser.add_argument('--out', help='also write the tables (markdown) here')
    parser.add_argument('--cpu-smoke', action='store_true', help='run on the CPU (checks the script, no GPU times)')
    args = parser.parse_args()
    if not torch.cuda.is_available() and not args.cpu_smoke:
        sys.exit('profile_e2e.py needs a CUDA GPU (--cpu-smoke runs it on the CPU to check the script)')
    import models  # noqa: F401
    from engine.config import load_config
    torch.backends.cudnn.benchmark = True
    device = torch.device('cpu' if args.cpu_smoke else 'cuda')
    cfg = load_config(args.config)
    base = build_model(cfg, device)
    state = {k: v.detach().clone() for k, v in base.state_dict().items()}
    del base
    gpu = torch.cuda.get_device_name() if device.type == 'cuda' else 'the CPU'
    lines = [f'## {os.path.basename(args.config)} on {gpu}', '',
             f'command: `python {" ".join(sys.argv)}`', '']
    if not args.skip_inference:
        lines += profile_inference(cfg, args.mode, state, device)
        if device.type == 'cuda':
            lines += profile_graph_host(cfg, args.mode, state, device)
    if not args.skip_train:
        lines += profile_training(cfg, args.train_mode or args.mode, state, device)
    print_report(lines, args.out)


if __name__ == '__main__':
    main()
