"""The exported OPS test step in onnxruntime beside the same step in PyTorch, one process, interleaved rounds.

    python tools/export_onnx.py --config configs/ops-t_r50_704x256_8f_24e.py --weights CKPT --out ops-t.onnx --grid
    python benchmarks/bench_onnx.py --config configs/ops-t_r50_704x256_8f_24e.py --weights CKPT --onnx ops-t.onnx \
        --grid --device cuda --rounds 5 --iters 20 --out onnx.md

Both run the graph's step (engine/export.py, `OccupancyExport`: offline, batch 1, all T*N images, float32,
the sampling op's PyTorch path in PyTorch too, so both compute the same function), on one input (random
uint8 images, a ring of cameras) held on the device: PyTorch eager, the bare model (no execution policy,
no CUDA graph); onnxruntime with the CUDA execution provider (CPU for --device cpu), inputs and outputs
bound on the device (I/O binding), so no host copy is timed on either side. Each timed call is
bracketed by device synchronisations (wall clock). The two modes alternate (A B A B ...) for `--rounds`
rounds of `--iters` calls after `--warmup` calls each; the table gives the median of the round
medians, their min-max, and the ratio to PyTorch. It also prints how many graph nodes onnxruntime
placed on each execution provider (one profiled run): nodes that the CUDA provider lacks run on the
CPU, with copies between. The --onnx file must have been exported from the same config (and --grid).
"""
import argparse
import json
import os
import platform
import sys
import time
from collections import Counter

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.bench_e2e import summarise, table  # noqa: E402
from benchmarks.report import print_report  # noqa: E402

MODES = ('pytorch', 'onnxruntime')
NUMPY_DTYPES = {torch.uint8: np.uint8, torch.float32: np.float32}   # of the graph's inputs (img, occ2img)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--config', required=True, help='the config the graph was exported from')
    parser.add_argument('--weights', help='its checkpoint (random weights without)')
    parser.add_argument('--onnx', required=True, help='the graph of tools/export_onnx.py')
    parser.add_argument('--grid', action='store_true', help='the graph has the grid output (exported with --grid)')
    parser.add_argument('--image-size', type=int, nargs=2, metavar=('H', 'W'), help='as given to the export')
    parser.add_argument('--device', choices=['cuda', 'cpu'], default='cuda')
    parser.add_argument('--rounds', type=int, default=5)
    parser.add_argument('--iters', type=int, default=20, help='timed calls per mode and round')
    parser.add_argument('--warmup', type=int, default=5, help='untimed calls per mode before the rounds')
    parser.add_argument('--out', help='also write the table (markdown) here')
    return parser.parse_args(argv)


def providers_for(device):
    return ['CUDAExecutionProvider', 'CPUExecutionProvider'] if device.type == 'cuda' else ['CPUExecutionProvider']


def nodes_by_provider(path, providers, feeds):
    """{execution provider: number of graph nodes it ran} from one profiled run of the graph."""
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.enable_profiling = True
    session = ort.InferenceSession(path, sess_options=options, providers=providers)
    session.run(None, feeds)
    profile = session.end_profiling()
    with open(profile) as f:
        events = json.load(f)
    os.remove(profile)
    return Counter(event['args']['provider'] for event in events
                   if event.get('cat') == 'Node' and event.get('name', '').endswith('_kernel_time')
                   and 'provider' in event.get('args', {}))


class BoundSession:
    """An onnxruntime session whose inputs and outputs stay on the device (I/O binding): `run()` is one step."""

    def __init__(self, path, inputs, device):
        import onnxruntime as ort
        self.session = ort.InferenceSession(path, providers=providers_for(device))
        self.binding = self.session.io_binding()
        kind = 'cuda' if device.type == 'cuda' else 'cpu'
        index = (device.index or 0) if device.type == 'cuda' else 0
        for arg, tensor in zip(self.session.get_inputs(), inputs):
            self.binding.bind_input(arg.name, kind, index, NUMPY_DTYPES[tensor.dtype], list(tensor.shape),
                                    tensor.data_ptr())
        for arg in self.session.get_outputs():
            self.binding.bind_output(arg.name, kind, index)

    def run(self):
        self.session.run_with_iobinding(self.binding)

    def outputs(self):
        return self.binding.copy_outputs_to_cpu()


def timed_ms(step, sync, iters):
    """Median wall-clock milliseconds of `iters` calls of step(), each between two synchronisations."""
    times = []
    for _ in range(iters):
        sync()
        start = time.perf_counter()
        step()
        sync()
        times.append((time.perf_counter() - start) * 1000)
    return float(np.median(times))


def main(argv=None):
    args = parse_args(argv)
    if args.device == 'cuda' and not torch.cuda.is_available():
        sys.exit('bench_onnx.py: no CUDA GPU here; --device cpu runs both on the CPU')
    from engine.logs import quiet_libraries
    quiet_libraries()
    from engine.build import build_model
    from engine.config import load_config
    from engine.export import OccupancyExport, rig_inputs
    from tools.export_onnx import config_image_size
    device = torch.device(args.device)
    cfg = load_config(args.config, required=('model',))
    image_h, image_w = args.image_size or config_image_size(cfg, args.config)
    torch.manual_seed(0)
    model = build_model(cfg.model, checkpoint=args.weights)
    wrapper = OccupancyExport(model, image_h, image_w, with_grid=args.grid).to(device)
    inputs = [t.to(device).contiguous() for t in rig_inputs(wrapper)]

    def sync():
        if device.type == 'cuda':
            torch.cuda.synchronize(device)

    def pytorch_step():
        with torch.no_grad():
            return wrapper(*inputs)

    session = BoundSession(args.onnx, inputs, device)
    steps = dict(pytorch=pytorch_step, onnxruntime=session.run)
    for step in steps.values():
        for _ in range(args.warmup):
            step()
    session.run()          # the bound output buffers hold results only after one run (also with --warmup 0)
    sync()
    agreement = [float(np.abs(a.numpy(force=True).astype(np.float64) - b).max())
                 for a, b in zip(pytorch_step(), session.outputs())]
    per_round = {mode: [] for mode in MODES}
    for _ in range(args.rounds):
        for mode in MODES:
            per_round[mode].append(timed_ms(steps[mode], sync, args.iters))
    placement = nodes_by_provider(args.onnx, providers_for(device),
                                  {arg.name: t.numpy(force=True) for arg, t in zip(session.session.get_inputs(),
                                                                                  inputs)})
    name = torch.cuda.get_device_name(device) if device.type == 'cuda' else f'CPU ({torch.get_num_threads()} threads)'
    import onnxruntime as ort
    host = platform.processor() or platform.machine()
    lines = [f'# The OPS test step: onnxruntime beside PyTorch on {name}', '',
             f'torch {torch.__version__}, onnxruntime {ort.__version__}, host {host} x {os.cpu_count()} cores; '
             f'command: `python {" ".join(sys.argv)}`', '',
             f'graph nodes by execution provider: {dict(placement)}; max |onnxruntime - PyTorch| per output '
             f'({", ".join(wrapper.output_names)}): {", ".join(f"{d:.3g}" for d in agreement)}', '']
    lines += table(f'{args.config}, {image_h}x{image_w}, {wrapper.num_images} images, {args.rounds} rounds of '
                   f'{args.iters} calls', summarise(per_round))
    print_report(lines, args.out)
    return summarise(per_round), placement


if __name__ == '__main__':
    main()
