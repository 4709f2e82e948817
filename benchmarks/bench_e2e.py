"""End-to-end speed of OPS on one GPU: online inference and training steps, modes interleaved in one process.

    python benchmarks/bench_e2e.py --configs configs/ops-t_r50_704x256_8f_12e.py configs/ops-l_r50_704x256_8f_12e.py \
        --rounds 5 --out e2e.md

Any OPS-family config: OPS, OPUS-V2 (its voxel classifiers' biases at +0.2 too) and OPUS-Fusion (with random LiDAR
points: the key sweep's 34,688 and 9 earlier sweeps of as many, the stack its pipeline feeds). OPUS-Fusion is
not graph-capturable, so its graphed rows run eagerly; OPUS-V2's test step is graphed through the dense CPD module
(accel/dense_cpd.py), its training decoder as V1's with the sparse CPD modules eagerly after it.

Rig (what every mode sees): 704x256 crops of the nuScenes camera rig (tools/synthetic/calib.py), 6
cameras x 8 frames, random uint8 images normalised in the step (speed does not depend on content),
random weights with every classifier bias at +0.2 so that most points pass score_thr 0.5 (the
post-processing's worst case). Training: batch B (default 1) with 8 frames and 91,198 occupied
ground-truth voxels, colour augmentation, grad clip 35, AdamW with the config's lr multipliers.

Inference modes (batch 1, online: the backbone sees the 6 key-frame images, 7 history frames come
from the feature cache; each timed call includes the host->device copy of the images and the
device->host copy of the result, bracketed by cuda.synchronize):
* eager: faithful arithmetic with the fused kernels (float32: accel/modules.py, FUSED_MODULES), each kernel
  launched from Python (execution.test_cuda_graph=False);
* faithful: the same step replayed from a CUDA graph (the default of val.py/timing.py on CUDA);
* reference-eager, reference (not run by default): eager and faithful with the models/ code as written
  (execution.kernels='reference'), what the fused kernels gain;
* fast: graph, the fast test mode (execution.preset='fast': fp16 NHWC backbone + FPN with the batch norms folded into
  the convolutions, TF32 and fused decoder kernels, float32 in the decoder's per-query layers);
* fast-unfolded (not run by default): fast with the backbone's faithful classes put back, what folding gains;
* faithful-nhwc (not run by default): faithful with channels-last images into the backbone.
Training modes:
* faithful-eager: the original's step: fp16 autocast backbone with static loss scale 512, gradient
  checkpointing (backbone and decoder), AdamW (foreach), loss terms, NaN check and grad norm read
  on the host every step (mmcv's optimizer hook + mmdet's loss parsing); the decoder launched from
  Python (train.py with execution.train_cuda_graph=False); its self-attention through float32 SDPA
  (the fused modules);
* faithful: the same arithmetic with the decoder not checkpointed and its forward and backward
  replayed from CUDA graphs (train.py);
* reference-eager, reference (not run by default): the two above with the models/ code as written;
* fast-eager: same function, no host reads (engine/train_step.py: lazy log values, fused AdamW that
  skips non-finite steps on the device, parameter groups of equal lr merged), no gradient
  checkpointing, channels-last backbone; in the decoder TF32 products and the self-attention through
  SDPA; the decoder launched from Python (execution.train_cuda_graph=False);
* fast: fast-eager with the decoder replayed from CUDA graphs (train.py --fast);
* fast-bf16: fast with the backbone under bf16 autocast (no loss scaling);
* fast-unfolded (not run by default): fast with the backbone's faithful classes put back (its batch norms run);
* faithful-nhwc (not run by default): faithful with channels-last images into the fp16 backbone (the same
  products in cuDNN's half-precision layout).
Modes run interleaved (A B C A B C ...) for `--rounds` rounds, so host noise hits all of them; the
table gives the median over rounds of each round's median, the min-max of the round medians, and
the ratio against the first mode. Training's "GPU GiB": the memory a mode adds to the process over
its set-up and warm-up (the caching allocator's reserved bytes, CUDA graph pools included).
"""
import argparse
import copy
import os
import platform
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tools.synthetic import calib  # noqa: E402

NUM_VIEWS = 6
# each mode's execution policy (accel/policy.py), as val.py / timing.py build it
INFER_MODES = {'eager': dict(test_cuda_graph=False), 'faithful': dict(), 'fast': dict(preset='fast'),
               'fast-unfolded': dict(preset='fast'), 'reference': dict(kernels='reference'),
               'faithful-nhwc': dict(channels_last=True),
               'reference-eager': dict(kernels='reference', test_cuda_graph=False)}
TRAIN_MODES = ('faithful-eager', 'faithful', 'fast-eager', 'fast', 'fast-bf16', 'reference-eager', 'reference',
               'fast-unfolded', 'faithful-nhwc')


def lidar2img_rig(num_frames, height=256, width=704, metres_per_frame=2.5):
    """[T*6, 4, 4] current-LiDAR -> pixel matrices of the test-time 704x256 crop, and ego2lidar [4, 4].

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
    # OPUS-V2 and OPUS-Fusion project from the occupancy frame (ego2img, ego2occ; Fusion's points: ego2points)
    ego2img = [(m @ ego2lidar).astype(np.float32) for m in lidar2img]
    identity = np.eye(4, dtype=np.float32)
    return dict(filename=filenames, lidar2img=list(lidar2img), ego2lidar=ego2lidar, ego2img=ego2img,
                ego2occ=identity, ego2points=identity,
                img_timestamp=[0.5 * f for f in frame_ids for _ in range(NUM_VIEWS)],
                ori_shape=[(height, width, 3)] * len(filenames), img_shape=[(height, width, 3)] * len(filenames),
                pad_shape=[(height, width, 3)] * len(filenames))


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def frame_images(frame, height=256, width=704):
    """uint8 [6, 3, H, W] images of global frame `frame` (the same in every mode), pinned on GPU machines."""
    g = torch.Generator().manual_seed(10_000 + frame)
    img = torch.randint(0, 256, (NUM_VIEWS, 3, height, width), generator=g, dtype=torch.uint8)
    return img.pin_memory() if torch.cuda.is_available() else img


def random_points(frame, key_points=34_688, sweeps=9):
    """float32 [N, 5] LiDAR points of a sample (x, y, z in metres within the range, intensity, time lag): the key
    sweep's `key_points` (the real keyframe's count) with lag 0, then `sweeps` earlier sweeps of as many, as
    OPUS-Fusion's pipeline stacks them (speed does not depend on where the points are)."""
    g = torch.Generator().manual_seed(20_000 + frame)
    n = key_points * (1 + sweeps)
    xyz = torch.rand(n, 3, generator=g) * torch.tensor([80.0, 80.0, 6.4]) - torch.tensor([40.0, 40.0, 1.0])
    lag = torch.arange(1 + sweeps).repeat_interleave(key_points).float()[:, None] * 0.05
    return torch.cat([xyz, torch.rand(n, 1, generator=g), lag], 1)


def uses_points(model):
    """Whether the detector reads LiDAR points (OPUS-Fusion)."""
    return hasattr(model, 'lidar_inputs')


def random_occupancy(num_occupied, generator, batch=1):
    """uint8 [B, 200, 200, 16] labels with ~num_occupied non-free voxels each, half camera-visible."""
    sems, masks = [], []
    for _ in range(batch):
        sem = torch.full((200 * 200 * 16,), 17, dtype=torch.uint8)
        idx = torch.randperm(sem.numel(), generator=generator)[:num_occupied]
        sem[idx] = torch.randint(0, 17, (num_occupied,), generator=generator, dtype=torch.uint8)
        sems.append(sem.view(200, 200, 16))
        masks.append((torch.rand(sem.numel(), generator=generator) < 0.5).view(200, 200, 16))
    return torch.stack(sems), torch.stack(masks)


def build_model(cfg, device, execution=None, state=None, unfold_backbone=False):
    """The config's detector on `device` with `state` (None: random weights whose points pass the threshold),
    run by the execution policy of the `execution` dict (None: the bare model); `unfold_backbone`: the backbone's
    batch-norm folding (accel/folded_backbone.py) undone after the policy is applied."""
    from mmdet.models import build_detector

    from accel import accelerate, policy_from_config
    from accel.folded_backbone import unfold_batch_norms
    torch.manual_seed(0)
    model = build_detector(cfg.model)
    if state is None:
        model.init_weights()
        # Random weights predict nothing (classifier bias -4.6): +0.2 makes most points pass 0.5 (OPUS-V2: its
        # voxel classifiers' biases, for the voxels to pass 0.25)
        for layer in model.pts_bbox_head.transformer.decoder.decoder_layers:
            torch.nn.init.constant_(layer.cls_branch[-1].bias, 0.2)
        for densifier in getattr(model.pts_bbox_head, 'densifiers', ()):
            torch.nn.init.constant_(densifier.cls_branch[-1].bias, 0.2)
    else:
        model.load_state_dict(state)
    if execution is not None:
        accelerate(model, policy_from_config(execution))
    if unfold_backbone:
        unfold_batch_norms(model.img_backbone)
    return model.to(device)


class InferenceStream:
    """One mode's online stream: frame i is the key frame of sample i, frames i-1..i-7 its history."""

    def __init__(self, model, num_frames):
        self.model, self.num_frames = model.eval(), num_frames
        self.lidar2img, self.ego2lidar = lidar2img_rig(num_frames)
        self.frame = 0
        self.preds = {}

    def sample(self, keep=False):
        i = self.frame
        self.frame += 1
        metas = make_metas([max(i - t, 0) for t in range(self.num_frames)], self.lidar2img, self.ego2lidar)
        img = frame_images(i)
        device = next(self.model.parameters()).device
        extra = dict(points=[[random_points(i).to(device)]]) if uses_points(self.model) else {}
        sync()
        start = time.perf_counter()
        with torch.no_grad():
            result = self.model(return_loss=False, rescale=True, img=[img.to(device, non_blocking=True)[None]],
                                img_metas=[[metas]], **extra)
        sync()
        ms = (time.perf_counter() - start) * 1000
        if keep:
            self.preds[i] = result[0]
        return ms


def dense(pred):
    grid = np.full((200, 200, 16), 17, np.uint8)
    grid[tuple(pred['occ_loc'].T)] = pred['sem_pred']
    return grid


def agreement(preds_a, preds_b):
    """(fraction of voxels occupied in either with the same label, number of differing voxels)."""
    same = union = diff = 0
    for i in preds_a:
        a, b = dense(preds_a[i]), dense(preds_b[i])
        either = (a != 17) | (b != 17)
        union += int(either.sum())
        same += int((a[either] == b[either]).sum())
        diff += int((a != b).sum())
    return same / max(union, 1), diff


class TrainBench:
    """One training mode: its own model copy, optimizer and the step of that mode."""

    def __init__(self, cfg, mode, state, batch, device):
        from mmcv.runner import build_optimizer

        self.mode = mode
        self.fast = fast = mode.startswith('fast')
        # the policy and optimizer train.py builds for this mode (fused AdamW, checkpointing, graphs)
        cfg = copy.deepcopy(cfg)
        execution = dict(preset='fast' if fast else 'faithful', train_cuda_graph=not mode.endswith('-eager'),
                         train_autocast='bf16' if mode == 'fast-bf16' else 'fp16',
                         **(dict(kernels='reference') if mode.startswith('reference') else {}),
                         **(dict(channels_last=True) if mode == 'faithful-nhwc' else {}))
        if fast:
            cfg.optimizer['fused'] = True
        self.model = build_model(cfg, device, execution, state=state, unfold_backbone=mode == 'fast-unfolded').train()
        self.model.fp16_enabled = mode != 'fast-bf16'   # what the fp16 / sync-free hooks' wrap_fp16_model sets
        # as train.py: one parameter group per lr multiplier (the same update)
        from engine.train_step import merge_param_groups
        self.optimizer = merge_param_groups(build_optimizer(self.model, copy.deepcopy(cfg.optimizer)))
        num_frames = cfg.num_frames
        lidar2img, ego2lidar = lidar2img_rig(num_frames)
        g = torch.Generator().manual_seed(2)
        self.img = torch.randint(0, 256, (batch, num_frames * NUM_VIEWS, 3, 256, 704), generator=g,
                                 dtype=torch.uint8).to(device)
        sem, mask = random_occupancy(91198, g, batch)
        self.sem, self.mask = sem.to(device), mask.to(device)
        self.metas = [make_metas(list(range(num_frames)), lidar2img, ego2lidar) for _ in range(batch)]
        self.extra = dict(points=[random_points(b).to(device) for b in range(batch)]) if uses_points(self.model) \
            else {}
        if fast:
            from engine.train_step import SyncFreeStep
            self.sync_free = SyncFreeStep(self.optimizer, dict(max_norm=35, norm_type=2),
                                          1.0 if mode == 'fast-bf16' else 512.0)
        else:
            self.scaler = torch.amp.GradScaler(device.type, init_scale=512.0)   # static: update(512)

    def step(self):
        losses = self.model(img=self.img, img_metas=copy.deepcopy(self.metas), voxel_semantics=self.sem,
                            mask_camera=self.mask, return_loss=True, **self.extra)
        if not self.fast:
            loss, log_vars = self.model._parse_losses(losses)          # .item() per term, as mmdet does
            if not bool(torch.isfinite(loss)):                          # the NaN guard's host read
                return
            self.optimizer.zero_grad()
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
            params = [p for p in self.model.parameters() if p.requires_grad and p.grad is not None]
            float(torch.nn.utils.clip_grad_norm_(params, max_norm=35, norm_type=2))   # logged by mmcv
            self.scaler.step(self.optimizer)
            self.scaler.update(512.0)
        else:
            from engine.train_step import parse_losses_lazy
            loss, _ = parse_losses_lazy(losses)
            self.sync_free(loss)

    def timed(self, iters):
        times = []
        for _ in range(iters):
            sync()
            start = time.perf_counter()
            self.step()
            sync()
            times.append((time.perf_counter() - start) * 1000)
        return float(np.median(times))


def summarise(per_round):
    """{mode: [round medians]} -> {mode: (median, min, max)}."""
    return {m: (float(np.median(v)), float(np.min(v)), float(np.max(v))) for m, v in per_round.items()}


def table(title, stats, unit='ms', extra=None):
    base = next(iter(stats.values()))[0]
    lines = [title, '', f'| mode | median {unit} | min-max {unit} (round medians) | vs {next(iter(stats))} |'
             + (' ' + ' | '.join(extra[0]) + ' |' if extra else ''),
             '|---|---|---|---|' + ('---|' * len(extra[0]) if extra else '')]
    for mode, (med, lo, hi) in stats.items():
        row = f'| {mode} | {med:.1f} | {lo:.1f}-{hi:.1f} | {base / med:.2f}x |'
        if extra:
            row += ' ' + ' | '.join(extra[1][mode]) + ' |'
        lines.append(row)
    return lines


def bench_config(path, args, device):
    import models  # noqa: F401
    from engine.config import load_config
    cfg = load_config(path)
    name = os.path.basename(path)
    lines = [f'## {name}', '']
    base = build_model(cfg, device)
    state = {k: v.detach().clone() for k, v in base.state_dict().items()}
    del base
    T = cfg.num_frames

    if not args.skip_inference:
        streams = {m: InferenceStream(build_model(cfg, device, INFER_MODES[m], state=state,
                                              unfold_backbone=m == 'fast-unfolded'), T)
                   for m in args.infer_modes}
        for s in streams.values():          # fill the cache with 7 history frames, then warm up (graph capture)
            for _ in range(T + args.warmup):
                s.sample()
        per_round = {m: [] for m in streams}
        for r in range(args.rounds):
            for m, s in streams.items():
                per_round[m].append(float(np.median([s.sample(keep=(r == 0)) for _ in range(args.samples)])))
        stats = summarise(per_round)
        fps = {m: [f'{1000 / stats[m][0]:.1f}'] for m in stats}
        lines += table(f'Online inference, batch 1, {args.samples} samples x {args.rounds} rounds', stats,
                       extra=(['FPS'], fps))
        modes = list(streams)
        for m in modes[1:]:
            frac, diff = agreement(streams[modes[0]].preds, streams[m].preds)
            lines.append(f'\n{m} vs {modes[0]}: {frac * 100:.3f}% of the voxels occupied in either have the same '
                         f'label; {diff} of {200 * 200 * 16 * len(streams[m].preds)} voxels differ')
        lines.append('')
        del streams
        if device.type == 'cuda':
            torch.cuda.empty_cache()

    if not args.skip_train:
        for batch in args.train_batches:
            benches, memory = {}, {}
            for m in args.train_modes if batch == 1 else ['fast']:
                # the GPU memory a mode adds to the process: reserved by the caching allocator over its set-up and
                # warm-up steps (CUDA graph pools included, which the allocated-bytes counter does not see)
                if device.type == 'cuda':
                    torch.cuda.empty_cache()
                    before = torch.cuda.memory_reserved()
                    torch.cuda.reset_peak_memory_stats()
                benches[m] = TrainBench(cfg, m, state, batch, device)
                for _ in range(args.train_warmup):
                    benches[m].step()
                memory[m] = ((torch.cuda.max_memory_reserved() - before) / 2 ** 30 if device.type == 'cuda'
                             else float('nan'))
            per_round = {m: [] for m in benches}
            for r in range(args.rounds):
                for m, b in benches.items():
                    per_round[m].append(b.timed(args.train_iters))
            stats = summarise(per_round)
            extra = {m: [f'{batch * 1000 / stats[m][0]:.2f}', f'{memory[m]:.1f}'] for m in stats}
            lines += table(f'Training step, batch {batch}, {args.train_iters} steps x {args.rounds} rounds', stats,
                           extra=(['samples/s', 'GPU GiB'], extra))
            lines.append('')
            del benches
            if device.type == 'cuda':
                torch.cuda.empty_cache()
    return lines


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--configs', nargs='+', default=['configs/ops-t_r50_704x256_8f_12e.py'])
    parser.add_argument('--rounds', type=int, default=5)
    parser.add_argument('--samples', type=int, default=20, help='timed inference samples per mode and round')
    parser.add_argument('--warmup', type=int, default=5)
    parser.add_argument('--infer-modes', nargs='+', default=['eager', 'faithful', 'fast'], choices=list(INFER_MODES))
    parser.add_argument('--train-modes', nargs='+', default=list(TRAIN_MODES[:5]), choices=list(TRAIN_MODES))
    parser.add_argument('--train-iters', type=int, default=5, help='timed training steps per mode and round')
    parser.add_argument('--train-warmup', type=int, default=3)
    parser.add_argument('--train-batches', nargs='+', type=int, default=[1],
                        help='per-GPU batch sizes; above 1 only the fast mode runs')
    parser.add_argument('--skip-inference', action='store_true')
    parser.add_argument('--skip-train', action='store_true')
    parser.add_argument('--out', help='also write the tables (markdown) here')
    parser.add_argument('--cpu-smoke', action='store_true',
                        help='run on the CPU (checks the script, times nothing useful)')
    args = parser.parse_args()
    if not torch.cuda.is_available() and not args.cpu_smoke:
        sys.exit('bench_e2e.py needs a CUDA GPU (--cpu-smoke runs it on the CPU to check the script)')
    device = torch.device('cpu' if args.cpu_smoke else 'cuda')
    torch.backends.cudnn.benchmark = True
    gpu = torch.cuda.get_device_name() if device.type == 'cuda' else 'the CPU (smoke run)'
    lines = [f'# OPS end to end on {gpu}', '',
             f'torch {torch.__version__}, CUDA {torch.version.cuda}, host {platform.processor() or platform.machine()} '
             f'x {os.cpu_count()} cores; command: `python {" ".join(sys.argv)}`', '']
    for path in args.configs:
        lines += bench_config(path, args, device)
        print('\n'.join(lines), flush=True)
    text = '\n'.join(lines)
    if args.out:
        with open(args.out, 'w') as f:
            f.write(text + '\n')


if __name__ == '__main__':
    main()
