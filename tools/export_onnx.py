"""Export the OPS (V1) test step as an ONNX graph and check it with onnxruntime (docs/deploy.md).

    python tools/export_onnx.py --config configs/ops-t_r50_704x256_8f_24e.py --weights ckpt.pth --out ops-t.onnx
    python tools/export_onnx.py --config CFG --weights CKPT --out ops-t.onnx --grid    # with the post-processing

The graph takes uint8 images `[1, T*N, 3, H, W]` (BGR, frame-major, all frames: the offline test mode)
and occ2img `[1, T*N, 4, 4]` (ego of the key frame -> pixels) and returns the last decoder layer's
points (metres) and class scores (sigmoid), with --grid also the dense uint8 occupancy grid. Shapes are
static: T, N from the config, H x W from its test pipeline (or --image-size). Without --weights the
model has random weights (a warning says so). After the export the tool prints the graph's inputs and
outputs and runs it with onnxruntime on the CPU against PyTorch (float32, and float64 for the
tolerance) on one random input (engine/export.py, `check_export`); --no-check skips that.
OPUS-V2 configs are refused: the test step of its CPD module has data-dependent shapes.
"""
import argparse
import os.path as osp
import sys

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

# Only light imports before the arguments are parsed (`--help` answers at once); a bad input ends with one line
from engine.cli import DictAction, UserError, add_common_arguments, entry_point, run_main  # noqa: E402

PROG = 'export_onnx.py'


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Export the OPS test step as ONNX and check it with onnxruntime')
    parser.add_argument('--config', required=True, help='OPS (V1) model config')
    parser.add_argument('--weights', help='checkpoint (strict); without it: random weights, with a warning')
    parser.add_argument('--out', required=True, help='the .onnx file to write')
    parser.add_argument('--opset', type=int, default=None,
                        help='ONNX opset (default and minimum 20: the sampling op is a 5-D GridSample)')
    parser.add_argument('--grid', action='store_true',
                        help='also export the post-processing: the dense uint8 occupancy grid as a third output')
    parser.add_argument('--image-size', type=int, nargs=2, metavar=('H', 'W'),
                        help='augmented image size (default: final_dim of the config\'s test pipeline)')
    parser.add_argument('--no-check', action='store_true', help='do not run the graph with onnxruntime after export')
    parser.add_argument('--seed', type=int, default=0, help='seed of the random weights and of the check\'s images')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, default={},
                        help='override config entries, e.g. model.pts_bbox_head.num_query=600')
    add_common_arguments(parser, trust_checkpoint=True)
    return parser.parse_args(argv)


def config_image_size(cfg, path):
    """(H, W) of the augmented images: `final_dim` of the test pipeline's image transform, else of the
    config's `ida_aug_conf`."""
    candidates = []
    for split in ('test', 'val'):
        for step in cfg.get('data', {}).get(split, {}).get('pipeline', []):
            if isinstance(step, dict) and isinstance(step.get('ida_aug_conf'), dict):
                candidates.append(step['ida_aug_conf'])
    candidates.append(cfg.get('ida_aug_conf') or {})
    for conf in candidates:
        if 'final_dim' in conf:
            height, width = conf['final_dim']
            return int(height), int(width)
    raise UserError(f'{path}: no image size found (no ida_aug_conf.final_dim in the test pipeline or the config); '
                    f'give --image-size H W')


def print_graph(path, rows):
    print(f'exported {path}')
    for kind, name, dtype, shape in rows:
        print(f'  {kind:<6} {name:<8} {dtype:<6} [{", ".join(str(d) for d in shape)}]')


def print_check(report):
    """One line per output; returns the names of the outputs outside their tolerance."""
    failed = []
    for name, row in report.items():
        if name == 'grid':
            same = 'the same voxels' if row['differing'] == 0 else (
                f'{row["differing"]} voxels differ (a point or cell score within the tolerance of a decision '
                f'boundary)')
            print(f'  grid:   {same}; {row["occupied_ort"]} occupied (PyTorch {row["occupied_torch"]})')
            continue
        verdict = 'ok' if row['ok'] else 'OUTSIDE THE TOLERANCE'
        print(f'  {name + ":":<7} max |onnxruntime - PyTorch| {row["max_diff"]:.3g}; against float64: onnxruntime '
              f'{row["ort_err"]:.3g}, PyTorch float32 {row["torch_err"]:.3g}; tolerance {row["tolerance"]:.3g}: '
              f'{verdict}')
        if not row['decisions_stable']:
            print(f'  note: PyTorch float32 and float64 differ by more than rounding in {name}: a discrete decision '
                  f'(a point\'s camera, a threshold) flipped, so the tolerance is loose for this input')
        if not row['ok']:
            failed.append(name)
    return failed


def main(argv=None):
    """Export and check; a bad input raises SystemExit('export_onnx.py: error: ...') (engine/cli.py)."""
    return run_main(_main, PROG, argv)


def _main(argv):
    args = parse_args(argv)
    if args.weights and not osp.isfile(args.weights):
        raise UserError(f'--weights: checkpoint not found: {args.weights}')
    from engine.logs import quiet_libraries
    quiet_libraries(args.verbose)
    import torch

    from engine.build import build_model, register_modules
    from engine.config import load_config
    from engine.export import (
        EXPORT_OPSET,
        OccupancyExport,
        check_export,
        check_opset,
        describe_onnx,
        export_onnx,
        exportable_model_type,
        rig_inputs,
    )
    cfg = load_config(args.config, args.cfg_options, required=('model',))
    register_modules()
    try:
        exportable_model_type(cfg.model.type)
    except UserError as exc:
        raise UserError(f'{args.config}: {exc}') from None
    opset = EXPORT_OPSET if args.opset is None else args.opset
    check_opset(opset)
    image_h, image_w = args.image_size or config_image_size(cfg, args.config)
    torch.manual_seed(args.seed)
    model = build_model(cfg.model, checkpoint=args.weights, trust_checkpoint=args.trust_checkpoint)
    if args.weights is None:
        print(f'{PROG}: warning: no --weights: exporting random weights (seed {args.seed}); the graph\'s structure is '
              f'the trained model\'s, its outputs are not', file=sys.stderr)
    wrapper = OccupancyExport(model, image_h, image_w, with_grid=args.grid)
    inputs = rig_inputs(wrapper, seed=args.seed)
    export_onnx(wrapper, inputs, args.out, opset=opset)
    print_graph(args.out, describe_onnx(args.out))
    print(f'  opset {opset}; offline test step of {args.config} (all {wrapper.num_images} images of the T frames)')
    if args.no_check:
        return None
    print('onnxruntime (CPU) against PyTorch on one input (random images, a ring of cameras):')
    report = check_export(wrapper, args.out, inputs)
    failed = print_check(report)
    if failed:
        raise UserError(f'{args.out}: onnxruntime\'s {", ".join(failed)} differ from PyTorch beyond the float32 '
                        f'tolerance (the lines above); the graph does not compute the model')
    return report


if __name__ == '__main__':
    entry_point(_main, PROG)
