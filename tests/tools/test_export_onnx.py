"""tools/export_onnx.py and engine/export.py: the OPS test step as ONNX, run by onnxruntime on the CPU against the
detector's own PyTorch entry points (float32 and float64), on the tiny model of tests/tiny_ops.py."""
import copy

import numpy as np
import pytest
import torch

onnx = pytest.importorskip('onnx', reason='onnx is in requirements/runtime.txt (tools/install_env.sh installs it)')
ort = pytest.importorskip('onnxruntime', reason='onnxruntime is in requirements/runtime.txt')

from benchmarks import bench_onnx  # noqa: E402
from engine.build import build_model  # noqa: E402
from engine.config import load_config  # noqa: E402
from engine.export import EXPORT_OPSET, OccupancyExport, rig_inputs  # noqa: E402
from tiny_ops import TINY_MODEL_CONFIG  # noqa: E402
from tools import export_onnx  # noqa: E402

H, W = 64, 160                      # the tiny model's augmented images (tests/tiny_ops.py)
SCORE_THR, CTR_DIST_THR, VOXEL = 0.5, 3.0, 0.4   # the tiny config's test_cfg and voxel size
# float32 ulp at 1 (2^-23): onnxruntime's sigmoid is a polynomial approximation accurate to a few of them in
# absolute terms, and the probabilities' own rounding is at most one
EPS32 = float(np.finfo(np.float32).eps)


@pytest.fixture(scope='module')
def exported(tmp_path_factory):
    """The tool run on the tiny config with a checkpoint whose points pass the score threshold (--grid)."""
    work = tmp_path_factory.mktemp('export_onnx')
    config = work / 'tiny.py'
    config.write_text(TINY_MODEL_CONFIG.format(occ_root=str(work / 'gts')))
    torch.manual_seed(0)
    model = build_model(load_config(str(config), required=('model',)).model)
    for layer in model.pts_bbox_head.transformer.decoder.decoder_layers:
        # random weights predict nothing (classifier bias -4.6); +0.2 puts most probabilities just above 0.5
        torch.nn.init.constant_(layer.cls_branch[-1].bias, 0.2)
    checkpoint = work / 'tiny.pth'
    torch.save(dict(state_dict=model.state_dict()), checkpoint)
    out = work / 'tiny.onnx'
    report = export_onnx.main(['--config', str(config), '--weights', str(checkpoint), '--out', str(out), '--grid',
                               '--image-size', str(H), str(W)])
    return dict(model=model.eval(), out=str(out), report=report, config=str(config), checkpoint=str(checkpoint))


def reference(model, img, occ2img):
    """The last layer's points (metres) and probabilities through the detector's public path (image features
    of `extract_feat`, the head's `forward` from img_metas), in the model's dtype."""
    views = occ2img.shape[1]
    metas = [dict(lidar2img=list(occ2img[0].numpy()), ego2lidar=np.eye(4, dtype=np.float32),
                  img_shape=[(H, W, 3)] * views)]
    with torch.no_grad():
        outs = model.pts_bbox_head(model.extract_feat(img, metas), metas)
    head = model.pts_bbox_head
    return head.decode_points(outs['all_refine_pts'][-1]).numpy(), outs['all_cls_scores'][-1].sigmoid().numpy()


def test_graph_inputs_outputs_and_standard_operators(exported):
    graph = onnx.load(exported['out'])
    rows = [(v.name, [d.dim_value for d in v.type.tensor_type.shape.dim], v.type.tensor_type.elem_type)
            for v in list(graph.graph.input) + list(graph.graph.output)]
    u8, f32 = onnx.TensorProto.UINT8, onnx.TensorProto.FLOAT
    # tiny model: T = 2 frames x N = 6 views, 12 queries of 4 points after its 2 layers, 17 classes, 200x200x16
    assert rows == [('img', [1, 12, 3, H, W], u8), ('occ2img', [1, 12, 4, 4], f32), ('points', [1, 12, 4, 3], f32),
                    ('scores', [1, 12, 4, 17], f32), ('grid', [1, 200, 200, 16], u8)]
    assert [(o.domain, o.version) for o in graph.opset_import] == [('', EXPORT_OPSET)]
    ops = [node.op_type for node in graph.graph.node]
    assert {node.domain for node in graph.graph.node} == {''}          # standard ONNX operators only
    # the sampling op: one 5-D GridSample per FPN level (4) and decoder layer (2)
    assert ops.count('GridSample') == 8
    onnx.checker.check_model(graph)


@pytest.fixture(scope='module')
def runs(exported):
    """The graph in onnxruntime and the detector in PyTorch float32 and float64 on the tool's check input, with the
    tolerance of each float output: {name: (onnxruntime, float32, float64, tolerance)}, and the grid."""
    model = exported['model']
    img, occ2img = rig_inputs(OccupancyExport(model, H, W))           # the tool's check input (seed 0)
    session = ort.InferenceSession(exported['out'], providers=['CPUExecutionProvider'])
    points_ort, scores_ort, grid = session.run(None, dict(img=img.numpy(), occ2img=occ2img.numpy()))
    points32, scores32 = reference(model, img, occ2img)
    points64, scores64 = reference(copy.deepcopy(model).double(), img, occ2img)
    out = dict(img=img, occ2img=occ2img, grid=grid)
    for name, ort32, torch32, exact, magnitude in (('points', points_ort, points32, points64, np.abs(points64).max()),
                                                    ('scores', scores_ort, scores32, scores64, 1.0)):
        torch_err = np.abs(torch32 - exact).max()
        # PyTorch's own float32 error is rounding (no discrete decision such as a point's camera flipped between
        # float32 and float64): far below the values themselves
        assert torch_err < 2 ** -10 * magnitude, name
        # onnxruntime rounds the same reductions (convolutions up to 3x3x512 terms, products, layer norms) in
        # other orders and blockings: its error against float64 stays within a few times PyTorch's, plus a few
        # ulps of the magnitude (its sigmoid and exp are approximations accurate to ulps of their range)
        out[name] = (ort32, torch32, exact, 4 * torch_err + 4 * EPS32 * magnitude)
    return out


def test_points_and_scores_match_pytorch_float32_and_float64(exported, runs):
    for name in ('points', 'scores'):
        ort32, torch32, exact, tolerance = runs[name]
        assert np.abs(ort32 - exact).max() <= tolerance, name
        assert np.abs(ort32 - torch32).max() <= tolerance + np.abs(torch32 - exact).max(), name
    # the tool's own check says the same
    assert all(exported['report'][name]['ok'] for name in ('points', 'scores'))


def test_grid_has_the_voxels_of_the_detectors_test_step(exported, runs):
    model = exported['model']
    head = model.pts_bbox_head
    grid = runs['grid']
    with torch.no_grad():
        # the detector's own test step
        expected = head.unpack_occ(*model.offline_step(runs['img'], runs['occ2img'], image_h=H, image_w=W))[0]
    occupied = np.argwhere(grid[0] != head.empty_label)
    assert len(expected['occ_loc']) > 0                                        # not a trivially empty grid
    np.testing.assert_array_equal(occupied, expected['occ_loc'])
    np.testing.assert_array_equal(grid[0][tuple(occupied.T)], expected['sem_pred'])
    assert exported['report']['grid']['differing'] == 0

    # Equal voxels are what to expect, not luck: no point lies within the tolerances above of a decision boundary
    # of the post-processing (measured on the float64 model)
    points, scores = runs['points'][2][0], runs['scores'][2][0]                 # [Q, P, 3] metres, [Q, P, C]
    points_tol, scores_tol = runs['points'][3], runs['scores'][3]
    best = scores.max(-1)
    distance = np.linalg.norm(points - points.mean(1, keepdims=True), axis=-1)
    assert np.abs(best - SCORE_THR).min() > scores_tol                         # off the score threshold
    assert np.abs(distance - CTR_DIST_THR).min() > 2 * points_tol              # off the centroid distance limit
    kept = points[(best > SCORE_THR) & (distance < CTR_DIST_THR)]
    cell = (kept - np.asarray(head._pc_range[:3])) / VOXEL
    assert np.abs(cell - np.round(cell)).min() * VOXEL > points_tol            # kept points: off every cell face


def test_refuses_opus_v2_in_one_line(tmp_path):
    with pytest.raises(SystemExit) as exc:
        export_onnx.main(['--config', 'configs/opusv2-t_r50_704x256_8f_50e.py', '--out', str(tmp_path / 'v2.onnx')])
    message = str(exc.value)
    assert '\n' not in message and 'OPUSV2' in message and 'data-dependent shapes' in message
    assert not (tmp_path / 'v2.onnx').exists()


def test_missing_weights_file_in_one_line(exported, tmp_path):
    with pytest.raises(SystemExit) as exc:
        export_onnx.main(['--config', exported['config'], '--weights', str(tmp_path / 'none.pth'),
                          '--out', str(tmp_path / 'x.onnx')])
    assert str(exc.value) == f'export_onnx.py: error: --weights: checkpoint not found: {tmp_path / "none.pth"}'


def test_opset_below_20_refused_in_one_line(exported, tmp_path):
    with pytest.raises(SystemExit) as exc:
        export_onnx.main(['--config', exported['config'], '--out', str(tmp_path / 'x.onnx'), '--opset', '17',
                          '--image-size', str(H), str(W)])
    message = str(exc.value)
    assert '\n' not in message and '--opset 17' in message and 'GridSample' in message


def test_image_size_comes_from_the_test_pipeline():
    cfg = load_config('configs/ops-t_r50_704x256_8f_24e.py', required=('model',), check_nested=False)
    assert export_onnx.config_image_size(cfg, 'ops-t') == (256, 704)


def test_benchmark_cpu_path(exported, capsys):
    """benchmarks/bench_onnx.py on the CPU (its GPU path is the same code with the CUDA provider)."""
    stats, placement = bench_onnx.main(['--config', exported['config'], '--weights', exported['checkpoint'],
                                        '--onnx', exported['out'], '--grid', '--image-size', str(H), str(W),
                                        '--device', 'cpu', '--rounds', '2', '--iters', '1', '--warmup', '0'])
    assert set(placement) == {'CPUExecutionProvider'} and placement['CPUExecutionProvider'] > 0
    assert set(stats) == {'pytorch', 'onnxruntime'}
    assert all(lo <= median <= hi for median, lo, hi in stats.values())
    assert 'onnxruntime beside PyTorch' in capsys.readouterr().out
