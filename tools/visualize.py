"""Draw a predicted occupancy grid next to its ground truth (bird's-eye view, PNG).

    python tools/visualize.py --pred demo_output/preds/<token>.npz \
        --gt data/synthetic/gts/<scene>/<token>/labels.npz --out occupancy.png

Each BEV pixel shows the class of the highest occupied voxel of its column (x right, y up, ego at
the centre); free columns are white. With `--camera-mask` only camera-visible voxels are drawn
(what mIoU scores).
"""
import argparse
import os

import numpy as np

OCC_CLASS_NAMES = ('others', 'barrier', 'bicycle', 'bus', 'car', 'construction_vehicle', 'motorcycle',
                   'pedestrian', 'traffic_cone', 'trailer', 'truck', 'driveable_surface', 'other_flat',
                   'sidewalk', 'terrain', 'manmade', 'vegetation')
FREE_LABEL = 17
GRID_SHAPE = (200, 200, 16)
# RGB colours per class id (0..16), then free (white).
PALETTE = np.array([
    [0, 0, 0], [255, 120, 50], [255, 192, 203], [255, 255, 0], [0, 150, 245], [0, 255, 255],
    [200, 180, 0], [255, 0, 0], [255, 240, 150], [135, 60, 0], [160, 32, 240], [255, 0, 255],
    [139, 137, 137], [75, 0, 75], [150, 240, 80], [230, 230, 250], [0, 175, 0], [255, 255, 255],
], dtype=np.uint8)


def dense_from_sparse(sem_pred, occ_loc, shape=GRID_SHAPE):
    """Dense label grid [X, Y, Z] (free = 17) from `sem_pred` [M] and `occ_loc` [M, 3] (x, y, z)."""
    grid = np.full(shape, FREE_LABEL, dtype=np.uint8)
    occ_loc = np.asarray(occ_loc, dtype=np.int64).reshape(-1, 3)
    grid[occ_loc[:, 0], occ_loc[:, 1], occ_loc[:, 2]] = np.asarray(sem_pred, dtype=np.uint8)
    return grid


def bev_image(semantics):
    """[X, Y, Z] labels -> [Y, X, 3] uint8 image of the top-most occupied voxel per column, y up."""
    occupied = semantics != FREE_LABEL
    z_top = GRID_SHAPE[2] - 1 - np.argmax(occupied[:, :, ::-1], axis=2)  # highest occupied z
    top = np.take_along_axis(semantics, z_top[..., None], axis=2)[..., 0]
    top = np.where(occupied.any(axis=2), top, FREE_LABEL)
    return PALETTE[top.T[::-1]]  # rows = y (flipped so +y is up), columns = x


def load_prediction(path):
    with np.load(path) as f:
        if 'semantics' in f:
            return f['semantics']
        return dense_from_sparse(f['sem_pred'], f['occ_loc'])


def load_gt(path):
    with np.load(path) as f:
        return f['semantics'], f['mask_camera'].astype(bool)


def draw(pred, gt, mask=None, out='occupancy.png', title=''):
    """Save a side-by-side PNG of two [200, 200, 16] label grids; `mask` hides invisible voxels."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch
    if mask is not None:
        pred = np.where(mask, pred, FREE_LABEL)
        gt = np.where(mask, gt, FREE_LABEL)
    fig, axes = plt.subplots(1, 2, figsize=(12, 7.0))
    for ax, grid, name in zip(axes, (pred, gt), ('prediction', 'ground truth')):
        ax.imshow(bev_image(grid), extent=(-40, 40, -40, 40), interpolation='nearest')
        ax.set_title(name)
        ax.set_xlabel('x (m, forward)')
        ax.set_ylabel('y (m, left)')
        ax.plot(0, 0, marker='^', color='k', markersize=8)
    present = sorted(set(np.unique(pred)) | set(np.unique(gt)) - {FREE_LABEL})
    handles = [Patch(color=PALETTE[c] / 255.0, label=OCC_CLASS_NAMES[c]) for c in present if c != FREE_LABEL]
    fig.legend(handles=handles, loc='lower center', ncol=min(len(handles), 6) or 1, fontsize=8)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.11, 1, 0.95))  # the bottom strip holds the class legend
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--pred', required=True, help='.npz with sem_pred + occ_loc (val.py --save-dir) or semantics')
    parser.add_argument('--gt', required=True, help='Occ3D labels.npz')
    parser.add_argument('--out', default='occupancy.png')
    parser.add_argument('--camera-mask', action='store_true', help='draw only camera-visible voxels')
    args = parser.parse_args()
    for path in (args.pred, args.gt):
        if not os.path.isfile(path):
            parser.error(f'file not found: {path}')
    gt, mask = load_gt(args.gt)
    out = draw(load_prediction(args.pred), gt, mask if args.camera_mask else None, args.out,
               title=os.path.basename(os.path.dirname(args.gt)))
    print(f'wrote {out}')


if __name__ == '__main__':
    main()
