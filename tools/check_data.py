"""Check that every image, sweep and label file the infos name exists and is not empty.

    python tools/check_data.py --config configs/ops-t_r50_704x256_8f_24e.py          # train + val of a config
    python tools/check_data.py --config CFG --splits val --no-images                   # labels only
    python tools/check_data.py --infos data/nuscenes/nuscenes_infos_val_sweep.pkl      # an info pickle
    python tools/check_data.py --infos PKL --occ-root data/nuscenes/gts --no-sweeps
    python tools/check_data.py --infos PKL --benchmark nuscenes-occupancy --occ-root data/nuscenes/occupancy

With --config it checks what each split's pipeline reads (key-frame images, camera sweeps when the
config uses past frames, the Occ3D labels) plus the labels the evaluation reads (val, test); with
--infos, every image and sweep of the pickle and its labels (`occ_path`, or under --occ-root).
Prints the problems (all of them with --list-all, else the first 20) and exits with status 1 when
there are any. train.py and val.py run the same check before they start (loaders/data_check.py).
"""
import argparse
import os
import os.path as osp
import sys

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from engine.cli import DictAction, UserError, add_common_arguments, entry_point, run_main  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Check that the files named by the info pickles exist and are '
                                                 'not empty')
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument('--config', help='config whose data.<split> datasets are checked')
    source.add_argument('--infos', nargs='+', help='info pickle(s) of gen_sweep_info.py')
    parser.add_argument('--splits', nargs='+', default=['train', 'val'], choices=['train', 'val', 'test'],
                        help='with --config: the splits to check (default: train val)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, default={},
                        help='override config values, e.g. data.val.ann_file=...')
    parser.add_argument('--occ-root', help='with --infos: Occ3D gts/ folder (default: the infos\' occ_path)')
    from core.benchmarks import benchmark_names
    parser.add_argument('--benchmark', default='occ3d-nuscenes', choices=benchmark_names(),
                        help='with --infos: the benchmark whose label layout --occ-root has (core/benchmarks/)')
    parser.add_argument('--no-images', action='store_true', help='check the labels only')
    parser.add_argument('--no-sweeps', action='store_true', help='with --infos: skip the camera sweeps')
    parser.add_argument('--list-all', action='store_true', help='print every problem (default: the first 20)')
    parser.add_argument('--quiet', action='store_true', help='no progress bar')
    add_common_arguments(parser)
    return parser.parse_args(argv)


def report(problems, list_all):
    shown = problems if list_all else problems[:20]
    for path, what, problem in shown:
        print(f'{problem:8s} {path}  ({what})')
    if len(shown) < len(problems):
        print(f'... and {len(problems) - len(shown)} more (--list-all prints them all)')


def main(argv=None):
    """Check; problems raise SystemExit('check_data.py: error: ...') after the list (engine/cli.py)."""
    return run_main(_main, 'check_data.py', argv)


def _main(argv):
    args = parse_args(argv)
    from engine.logs import quiet_libraries
    quiet_libraries(args.verbose)
    from loaders.data_check import check_infos, dataset_files, find_problems
    results = []  # (source, number checked, problems)
    if args.infos:
        for ann_file in args.infos:
            total, problems = check_infos(ann_file, occ_root=args.occ_root, sweeps=not args.no_sweeps,
                                          progress=not args.quiet, benchmark=args.benchmark)
            results.append((ann_file, total, problems))
    else:
        from engine.config import load_config
        cfg = load_config(args.config, args.cfg_options, required=('data',))
        from mmdet.datasets import build_dataset

        import loaders  # noqa: F401  (registers the dataset and pipelines)
        for split in args.splits:
            if split not in cfg.data:
                raise UserError(f'{args.config}: has no data.{split}; check one of '
                                f'{[s for s in ("train", "val", "test") if s in cfg.data]} (--splits)')
            dataset = build_dataset(cfg.data[split], dict(test_mode=split != 'train'))
            files = dataset_files(dataset, images=not args.no_images, eval_labels=split != 'train')
            problems = find_problems(files, progress=not args.quiet, desc=f'data check ({split})')
            results.append((f'data.{split} ({dataset.ann_file}, {len(dataset)} samples)', len(files), problems))
    bad = 0
    for source, total, problems in results:
        if problems:
            print(f'{source}: {len(problems)} of {total} files missing or empty:')
            report(problems, args.list_all)
            bad += len(problems)
        else:
            print(f'{source}: all {total} files present')
    if bad:
        relative = any(not osp.isabs(path) for _, _, problems in results for path, _, _ in problems)
        raise UserError(f'{bad} file(s) missing or empty (listed above); extract the missing archives or regenerate '
                        f'the infos with gen_sweep_info.py'
                        + (f' (relative paths are read from {os.getcwd()})' if relative else ''))
    return results


if __name__ == '__main__':
    entry_point(_main, 'check_data.py')
