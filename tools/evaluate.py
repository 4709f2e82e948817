"""Evaluate saved predictions of any benchmark, stating the protocol it applies.

    python tools/evaluate.py --benchmark occ3d-nuscenes --pred-dir preds/ --config configs/ops-t_r50_704x256_8f_24e.py
    python tools/evaluate.py --benchmark occ3d-nuscenes --pred-dir preds/ \
        --infos data/nuscenes/nuscenes_infos_val_sweep.pkl --occ-root data/nuscenes/gts --camera-mask off --json m.json

The predictions are the `<sample token>.npz` files of `val.py --save-dir` (evaluation/predictions.py), one per
sample whatever the number of processes that wrote them, so the numbers do not depend on it. The ground truth
and the sample order come from the config's val split (`--config`) or from an info pickle (`--infos`, for the
benchmarks whose dataset reads nothing else). The lines above the tables say what is counted: the classes,
the voxels (camera mask or not), RayIoU's thresholds and rays (docs/evaluation.md, "Protocols"); val.py
evaluates through the same code.
"""
import argparse
import inspect
import json
import os
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

from engine.cli import UserError, add_common_arguments, entry_point, run_main  # noqa: E402


def parse_args(argv=None):
    from core.benchmarks import benchmark_names
    parser = argparse.ArgumentParser(prog='evaluate.py', description='mIoU (and RayIoU / geometry IoU, as the '
                                     'benchmark defines them) of saved predictions')
    parser.add_argument('--benchmark', required=True, choices=benchmark_names(), help='the protocol (core/benchmarks/)')
    parser.add_argument('--pred-dir', required=True, help='folder of <sample token>.npz (val.py --save-dir)')
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument('--config', help='take the samples and label files from this config\'s val split')
    source.add_argument('--infos', help='take the samples from this info pickle (gen_sweep_info.py)')
    parser.add_argument('--data-root', default=None, help='with --infos: the folder relative paths start from')
    parser.add_argument('--occ-root', default=None, help='the label folder (default: the config\'s occ_root, or '
                                                         'the label paths stored in the infos)')
    parser.add_argument('--camera-mask', choices=['on', 'off'], default=None,
                        help='the mIoU on camera-visible voxels only (on) or on all voxels (off); default: the '
                             'benchmark\'s protocol')
    parser.add_argument('--device', default='auto', choices=['auto', 'cpu', 'cuda'], help='RayIoU ray casting')
    parser.add_argument('--json', default=None, help='also write the numbers and the protocol here')
    add_common_arguments(parser)
    return parser.parse_args(argv)


def dataset_type_of(benchmark):
    """The registered dataset class whose `benchmark` argument defaults to `benchmark` (name, class)."""
    from mmdet.datasets import DATASETS

    import loaders  # noqa: F401  (registers the datasets)
    for name, cls in DATASETS.module_dict.items():
        param = inspect.signature(cls.__init__).parameters.get('benchmark')
        if param is not None and param.default == benchmark:
            return name, cls
    raise UserError(f'no dataset reads {benchmark} infos on its own; evaluate with --config')


def build_eval_dataset(args):
    """(dataset in test mode without a pipeline, label folder) for --config or --infos."""
    from engine.build import build_dataset
    if args.config:
        from engine.config import config_benchmark, load_config
        cfg = load_config(args.config, required=('data',))
        if config_benchmark(cfg).name != args.benchmark:
            raise UserError(f'{args.config} is a {config_benchmark(cfg).name} config, not {args.benchmark}: '
                            f'evaluate with --benchmark {config_benchmark(cfg).name} or another config')
        data_cfg = dict(cfg.data.val, pipeline=[])
    else:
        name, cls = dataset_type_of(args.benchmark)
        required = [p.name for p in inspect.signature(cls.__init__).parameters.values()
                    if p.default is inspect.Parameter.empty and p.name not in ('self', 'ann_file')]
        if required:
            raise UserError(f'{name} also needs {required}: evaluate {args.benchmark} with --config')
        data_cfg = dict(type=name, ann_file=args.infos, data_root=args.data_root, pipeline=[])
    if args.occ_root is not None:
        data_cfg['occ_root'] = args.occ_root
    dataset = build_dataset(data_cfg, test_mode=True)
    return dataset, getattr(dataset, 'occ_root', None)


def main(argv=None):
    return run_main(_main, 'evaluate.py', argv)


def _main(argv):
    args = parse_args(argv)
    from engine.logs import quiet_libraries
    quiet_libraries(args.verbose)
    import torch

    from core.benchmarks import get_benchmark
    from evaluation import SavedPredictions, evaluate_occupancy
    from evaluation.evaluator import format_summary, protocol_lines
    bench = get_benchmark(args.benchmark)
    camera_mask = None if args.camera_mask is None else args.camera_mask == 'on'
    protocol_lines(bench, camera_mask)           # a mask the benchmark has not: one line before any work
    dataset, occ_root = build_eval_dataset(args)
    infos = dataset.data_infos
    results = SavedPredictions(args.pred_dir, [info['token'] for info in infos], grid_shape=bench.grid_shape)
    device = ('cuda' if torch.cuda.is_available() else 'cpu') if args.device == 'auto' else args.device
    metrics = evaluate_occupancy(results, infos, occ_root, device=device, benchmark=bench, camera_mask=camera_mask)
    print(format_summary(metrics))
    if args.json:
        out = dict(metrics, benchmark=bench.name, camera_mask=args.camera_mask or 'benchmark default',
                   num_samples=len(infos), pred_dir=osp.abspath(args.pred_dir),
                   protocol=protocol_lines(bench, camera_mask))
        tmp = f'{args.json}.tmp'
        with open(tmp, 'w') as f:
            json.dump(out, f, indent=2)
        os.replace(tmp, args.json)
    return metrics


if __name__ == '__main__':
    entry_point(_main, 'evaluate.py')
