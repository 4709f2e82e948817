"""Voxel agreement of two folders of saved predictions (val.py --save-dir), e.g. fast vs faithful mode.

    python benchmarks/compare_predictions.py preds_faithful preds_fast

Prints the fraction of voxels occupied in either prediction that carry the same label in both, and
the number of voxels (of all 200 x 200 x 16 per sample) whose label differs; the samples are the
`<token>.npz` files the two folders share.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.bench_e2e import agreement  # noqa: E402
from evaluation.predictions import read_prediction  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('a')
    parser.add_argument('b')
    args = parser.parse_args()
    names = sorted(set(f for f in os.listdir(args.a) if f.endswith('.npz')) & set(os.listdir(args.b)))
    if not names:
        sys.exit(f'no <token>.npz predictions common to {args.a} and {args.b}')
    preds_a = {n: read_prediction(os.path.join(args.a, n)) for n in names}
    preds_b = {n: read_prediction(os.path.join(args.b, n)) for n in names}
    frac, diff = agreement(preds_a, preds_b)
    print(f'{args.b} vs {args.a}: {len(names)} samples, {frac * 100:.3f}% of the voxels occupied in either have the '
          f'same label; {diff} of {200 * 200 * 16 * len(names)} voxels differ')


if __name__ == '__main__':
    main()
