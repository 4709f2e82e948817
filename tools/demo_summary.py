"""Last step of the demo: compare trained vs untrained metrics and draw one predicted grid.

    python tools/demo_summary.py --world data/synthetic --preds demo_output/preds \
        --untrained demo_output/untrained_metrics.json --trained demo_output/trained_metrics.json \
        --png demo_output/occupancy.png
"""
import argparse
import glob
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tools.visualize import draw, load_gt, load_prediction  # noqa: E402


def find_gt(world, token):
    matches = glob.glob(os.path.join(world, 'gts', '*', token, 'labels.npz'))
    if not matches:
        raise FileNotFoundError(f'no ground truth gts/<scene>/{token}/labels.npz under {world}')
    return matches[0]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--world', required=True)
    parser.add_argument('--preds', required=True, help='folder of <token>.npz written by val.py --save-dir')
    parser.add_argument('--untrained', required=True)
    parser.add_argument('--trained', required=True)
    parser.add_argument('--png', required=True)
    args = parser.parse_args()
    with open(args.untrained) as f:
        untrained = json.load(f)
    with open(args.trained) as f:
        trained = json.load(f)
    print('\nOPS demo on the synthetic world (held-out scenes; a test world, not nuScenes):')
    print(f'{"":>12} {"mIoU":>7} {"RayIoU":>7} {"@1m":>6} {"@2m":>6} {"@4m":>6}')
    for name, m in (('untrained', untrained), ('trained', trained)):
        print(f'{name:>12} {m["mIoU"]:7.2f} {100 * m["RayIoU"]:7.2f} {100 * m["RayIoU@1"]:6.2f} '
              f'{100 * m["RayIoU@2"]:6.2f} {100 * m["RayIoU@4"]:6.2f}')

    preds = sorted(glob.glob(os.path.join(args.preds, '*.npz')))
    if not preds:
        sys.exit(f'no predictions in {args.preds}')
    # the sample in the middle of the held-out sequence: history frames are real, not repeated
    pred_path = preds[len(preds) // 2]
    token = os.path.splitext(os.path.basename(pred_path))[0]
    gt, mask = load_gt(find_gt(args.world, token))
    out = draw(load_prediction(pred_path), gt, mask, args.png,
               title=f'sample {token}: camera-visible voxels, trained demo model vs ground truth')
    print(f'\npicture of a predicted occupancy grid next to its ground truth: {out}')


if __name__ == '__main__':
    main()
