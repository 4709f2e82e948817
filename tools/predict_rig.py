"""Occupancy of one frame of your own cameras through the Python API (engine/predictor.py, docs/api.md).

The example frame is the real nuScenes keyframe of ../shared/data/nuscenes-keyframe: six 1600x900 JPEGs
and an mmdet3d "info v1.1" pickle whose `images[CAM]` give each camera's intrinsics (`cam2img`) and
mounting (`cam2ego`), and whose `ego2global` is the ego pose. The script reads them as a rig of your own
would be read, runs the predictor and writes one PNG: the bird's-eye view of the predicted voxels (the
top class of every column) with the decoder's points, the voxels drawn on the six images, the class legend.

    python tools/predict_rig.py --config configs/ops-t_r50_704x256_8f_24e.py --weights ops-t.pth \
        --out predict_rig.png
    python tools/predict_rig.py --config configs/ops-t_r50_704x256_8f_24e.py      # random weights

Without --weights the model has random initial weights (said in the picture's title and on stdout): its
class scores stay near their prior, so expect no occupied voxel; the run shows the data path only.
"""
import argparse
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # run as a script too

from engine.cli import UserError, add_common_arguments, entry_point, run_main  # noqa: E402

DEFAULT_DATA = os.path.join(os.path.dirname(ROOT), 'shared', 'data', 'nuscenes-keyframe')
BEV_SCALE = 4           # picture pixels per voxel of the bird's-eye view
POINT_GREY = (150, 150, 150)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--config', default=os.path.join(ROOT, 'configs', 'ops-t_r50_704x256_8f_24e.py'),
                        help='model config (its test pipeline gives the image resize and crop)')
    parser.add_argument('--weights', default=None, help='checkpoint; without it the model has random weights')
    parser.add_argument('--data', default=DEFAULT_DATA,
                        help='folder with the six images and one mmdet3d info v1.1 pickle (their calibration)')
    parser.add_argument('--out', default='predict_rig.png', help='the PNG to write')
    parser.add_argument('--device', default='auto', help="'auto' (CUDA when available), 'cpu', 'cuda', ...")
    add_common_arguments(parser, trust_checkpoint=True)
    return parser.parse_args(argv)


def read_rig(data_dir, camera_names):
    """The frame of `data_dir`: (info pickle path, BGR images, intrinsics [N, 3, 3], cam2ego [N, 4, 4],
    ego_pose [4, 4], timestamp in seconds), cameras in `camera_names` order."""
    from loaders.pipelines.image_io import imread_bgr
    from tools.visualize import load_sample_geometry, read_infos
    if not os.path.isdir(data_dir):
        raise UserError(f'--data: folder not found: {data_dir}')
    pickles = sorted(f for f in os.listdir(data_dir) if f.endswith('.pkl'))
    if len(pickles) != 1:
        raise UserError(f'--data: {data_dir} holds {len(pickles)} .pkl files; expected the one info pickle of '
                        f'the frame')
    info_path = os.path.join(data_dir, pickles[0])
    infos, v2 = read_infos(info_path)
    if not v2:
        raise UserError(f'{info_path}: expected an mmdet3d info v1.1 pickle (data_list with images[CAM].cam2img, '
                        f'cam2ego and ego2global)')
    info = infos[0]
    missing = [cam for cam in camera_names if cam not in info['images']]
    if missing:
        raise UserError(f'{info_path}: no calibration of camera(s) {missing}')
    paths = load_sample_geometry(info_path, camera_names=camera_names)['images']
    images = [imread_bgr(paths[cam]) for cam in camera_names]
    intrinsics = np.stack([np.asarray(info['images'][cam]['cam2img'], dtype=np.float64) for cam in camera_names])
    cam2ego = np.stack([np.asarray(info['images'][cam]['cam2ego'], dtype=np.float64) for cam in camera_names])
    return info_path, images, intrinsics, cam2ego, np.asarray(info['ego2global'], dtype=np.float64), \
        float(info['timestamp'])


def bev_panel(result, bench, score_thr):
    """RGB picture of the bird's-eye view: the top class of every column (tools/visualize.py, `bev_image`),
    every decoder point as a grey dot and those above the score threshold in their class colour."""
    from PIL import Image, ImageDraw

    from tools.occ_render import class_palette
    from tools.visualize import bev_image
    palette = class_palette(bench.num_classes)
    image = Image.fromarray(bev_image(result.semantics, bench.free_label, palette))
    image = image.resize((image.width * BEV_SCALE, image.height * BEV_SCALE), Image.NEAREST)
    if result.points is not None:
        x0, y0, _, x1, y1, _ = bench.point_cloud_range
        columns = (result.points[:, 0] - x0) / (x1 - x0) * image.width
        rows = (y1 - result.points[:, 1]) / (y1 - y0) * image.height      # +y up, as bev_image
        confident = np.zeros(len(columns), bool) if result.point_scores is None else result.point_scores > score_thr
        draw = ImageDraw.Draw(image)
        for u, v, keep, label in zip(columns, rows, confident, result.point_labels if result.point_labels is not None
                                     else np.zeros(len(columns), np.int64)):
            colour = tuple(int(c) for c in palette[label]) if keep else POINT_GREY
            draw.rectangle((u - 1, v - 1, u + 1, v + 1), fill=colour)
        cx, cy = -x0 / (x1 - x0) * image.width, y1 / (y1 - y0) * image.height
        draw.polygon([(cx + 8, cy), (cx - 5, cy - 5), (cx - 5, cy + 5)], fill=(0, 0, 0))     # the ego, facing +x
    return np.asarray(image)


def figure(result, bench, info_path, title, score_thr):
    """The whole picture: title, bird's-eye view, the voxels on the six images, the class legend."""
    from PIL import Image

    from tools.visualize import camera_panel, caption, legend, load_sample_geometry
    bev = bev_panel(result, bench, score_thr)
    width = bev.shape[1]
    cameras = camera_panel(result.semantics, load_sample_geometry(info_path, camera_names=bench.camera_names), bench,
                           width=width)
    # three panels of round(W * scale) pixels: within a few pixels of `width`
    height = int(round(cameras.shape[0] * width / cameras.shape[1]))
    cameras = np.asarray(Image.fromarray(cameras).resize((width, height), Image.BILINEAR))
    points = 'no points' if result.points is None else (
        f'{len(result.points)} decoder points (grey; class colour above the score threshold {score_thr:g})')
    return np.concatenate([
        caption(width, title, size=16),
        caption(width, f"bird's-eye view, x forward (right), y left (up): {len(result.voxel_labels)} occupied voxels, "
                       f'{points}', size=12),
        bev,
        caption(width, 'occupied voxel centres seen by the cameras', size=12),
        cameras,
        legend(bench, width)])


def _main(argv):
    args = parse_args(argv)
    if args.weights and not os.path.isfile(args.weights):
        raise UserError(f'--weights: checkpoint not found: {args.weights}')
    from engine.logs import quiet_libraries
    quiet_libraries(args.verbose)
    from PIL import Image

    from engine.predictor import OccupancyPredictor
    predictor = OccupancyPredictor.from_config(args.config, args.weights, device=args.device,
                                               trust_checkpoint=args.trust_checkpoint)
    bench = predictor.benchmark
    info_path, images, intrinsics, cam2ego, ego_pose, timestamp = read_rig(args.data, predictor.camera_names)
    result = predictor(images, intrinsics, cam2ego, ego_pose, timestamp)
    weights = os.path.basename(args.weights) if args.weights else \
        'RANDOM WEIGHTS (no --weights): an untrained model, expect no occupied voxel'
    title = f'{os.path.basename(args.config)}, {weights}'
    score_thr = float(predictor.model.pts_bbox_head.test_cfg['score_thr'])
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    Image.fromarray(figure(result, bench, info_path, title, score_thr)).save(args.out)
    counts = {bench.class_names[c]: int(n) for c, n in zip(*np.unique(result.voxel_labels, return_counts=True))}
    print(f'{"random weights (no --weights)" if not args.weights else args.weights}: {len(result.voxel_labels)} '
          f'occupied voxels {counts}; images {images[0].shape[1]}x{images[0].shape[0]} -> '
          f'{result.image_hw[1]}x{result.image_hw[0]} (the config\'s test crop)')
    print(f'wrote {args.out}')
    return result


def main(argv=None):
    """Run; a bad input raises SystemExit('predict_rig.py: error: ...') (engine/cli.py)."""
    return run_main(_main, 'predict_rig.py', argv)


if __name__ == '__main__':
    entry_point(_main, 'predict_rig.py')
