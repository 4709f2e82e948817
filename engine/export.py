"""The OPS test step as an ONNX graph (docs/deploy.md): an export wrapper with static shapes, the export, and
its check with onnxruntime against PyTorch.

    wrapper = OccupancyExport(model, image_h=256, image_w=704, with_grid=True)    # model: the bare OPS, eval
    inputs = rig_inputs(wrapper)                                                   # random images, a camera ring
    export_onnx(wrapper, inputs, 'model.onnx', opset=EXPORT_OPSET)
    check = check_export(wrapper, 'model.onnx', inputs)                            # onnxruntime vs PyTorch

Symbols (docs/method.md, "Symbols and frames"): T frames, N views per frame, (H, W) the augmented
image, Q queries, P points per query of the last layer, C classes, (X, Y, Z) the occupancy grid.

What the graph computes is the offline test step of the bare model (`OPS.offline_step` without the
packing of the occupied cells): the float32 backbone and FPN on all T*N images, the decoder, and
optionally the post-processing to the dense grid. The sampling op is its exact PyTorch path
(`msmv_sampling_pytorch`: one 5-D `F.grid_sample` per level), which the exporter writes as the
standard ONNX GridSample of opset 20 (the first opset whose GridSample takes volumetric input).
"""
import contextlib
import copy

import numpy as np
import torch
import torch.nn as nn

from engine.cli import UserError

__all__ = ['EXPORT_OPSET', 'ExportError', 'OccupancyExport', 'exportable_model_type', 'pytorch_sampling_op',
           'ring_rig', 'rig_inputs', 'check_opset', 'export_onnx', 'describe_onnx', 'onnxruntime_session',
           'run_onnxruntime', 'check_export', 'ROUNDING_FACTOR', 'ULP_FLOOR']

# The sampling op reads one of N views per point with a 5-D (volumetric) GridSample; ONNX's GridSample
# takes 5-D input from opset 20 on (opset 16's is 4-D only).
EXPORT_OPSET = 20


class ExportError(UserError):
    """A model or an input the export does not cover; the message names it and what is covered."""


def exportable_model_type(type_name):
    """The registered detector class of the config's `model.type`, when the export covers it.

    Covered: `OPS` and subclasses whose test steps have static shapes (`GRAPH_CAPTURABLE`).
    OPUS-V2 (`OPUSV2`) is refused: its CPD module keeps sparse voxel sets of data-dependent size.
    """
    from mmdet.models import DETECTORS

    from models.ops import OPS
    cls = DETECTORS.get(type_name) if isinstance(type_name, str) else type_name
    if cls is None:
        raise ExportError(f'model type {type_name!r} is not a registered detector')
    name = cls.__name__
    if not issubclass(cls, OPS):
        raise ExportError(f'model type {name} is not covered: the ONNX export covers OPS (V1) configs')
    if not cls.TEST_STEPS <= cls.GRAPH_CAPTURABLE:
        reason = ("OPUS-V2's CPD module has data-dependent shapes" if name == 'OPUSV2'
                  else 'its test step has data-dependent shapes')
        raise ExportError(f'model type {name} is not covered: {reason}; the ONNX export covers OPS (V1) configs, '
                          f'whose test step has static shapes')
    return cls


@contextlib.contextmanager
def pytorch_sampling_op(model):
    """Within the block every sampling module of `model` uses the op's exact PyTorch path on every device.

    The sampling modules' `sampling_op` (models/ops_transformer.py) dispatches CUDA tensors to the compiled op
    when it is built; that op is no ONNX operator. Here each module's `sampling_op` is `msmv_sampling_pytorch`
    (the same function up to float32 rounding, docs/method.md "Sampling op"), restored after, so the traced
    graph holds GridSample nodes whatever the device.
    """
    from models.csrc.wrapper import msmv_sampling_pytorch
    samplers = [m for m in model.modules() if hasattr(m, 'sampling_op')]
    for module in samplers:
        module.sampling_op = msmv_sampling_pytorch
    try:
        yield
    finally:
        for module in samplers:
            del module.sampling_op           # back to the class's op


class OccupancyExport(nn.Module):
    """The offline test step of a bare OPS detector with static shapes, for `torch.onnx.export`.

    Args:
        detector (OPS): the bare model (`engine.build.build_model` without `execution`), weights loaded.
        image_h, image_w (int): size of the augmented images (the config's `ida_aug_conf.final_dim`).
        with_grid (bool): also return the dense occupancy grid (the post-processing of
            models/occ_postprocess.py: score filter, voxelisation, 3x3x3 closing).

    `forward(img, occ2img)`:
        img: uint8 `[1, T*N, 3, H, W]` BGR, frame-major (index t*N + n, t = 0 the key frame).
        occ2img: float32 `[1, T*N, 4, 4]` ego (key frame) -> pixels of the augmented image (u*d, v*d, d, 1).
    Returns (`output_names` in this order):
        points: float32 `[1, Q, P, 3]` the last layer's points, metres, ego frame of the key frame.
        scores: float32 `[1, Q, P, C]` their class probabilities (sigmoid of the logits).
        grid (with_grid): uint8 `[1, X, Y, Z]` labels indexed [x, y, z], `empty_label` where free.
    """

    def __init__(self, detector, image_h, image_w, with_grid=False):
        super().__init__()
        exportable_model_type(type(detector))
        self.detector = detector
        self.eval()
        self.image_h, self.image_w = int(image_h), int(image_w)
        self.with_grid = bool(with_grid)
        transformer = detector.pts_bbox_head.transformer
        self.num_images = transformer.num_frames * transformer.num_views

    def train(self, mode=True):
        """Always in eval mode (the test step: no dropout, BN statistics frozen). The exporter puts a module
        back into the mode it found it in, which for a fresh module is training mode."""
        return super().train(False)

    @property
    def output_names(self):
        return ['points', 'scores'] + (['grid'] if self.with_grid else [])

    @property
    def input_shapes(self):
        """{'img': [1, T*N, 3, H, W], 'occ2img': [1, T*N, 4, 4]}: the static shapes of the graph's inputs."""
        return dict(img=[1, self.num_images, 3, self.image_h, self.image_w], occ2img=[1, self.num_images, 4, 4])

    def check_inputs(self, img, occ2img):
        for name, tensor in (('img', img), ('occ2img', occ2img)):
            if list(tensor.shape) != self.input_shapes[name]:
                raise ExportError(f'OccupancyExport: {name} has shape {list(tensor.shape)}, the graph is built for '
                                  f'{self.input_shapes[name]} (T*N images of the exported H x W)')
        if img.dtype != torch.uint8:
            raise ExportError(f'OccupancyExport: img must be uint8 BGR 0..255, got {img.dtype}')

    def forward(self, img, occ2img):
        self.check_inputs(img, occ2img)
        detector = self.detector
        head = detector.pts_bbox_head
        B, V = img.shape[:2]
        with pytorch_sampling_op(detector), torch.autocast(img.device.type, enabled=False):
            # `OPS.offline_step` up to the packing of the occupied cells (the bare model's float32 backbone)
            feats = detector._image_feats(img.flatten(0, 1), None)                 # L x [B*V, C, H_l, W_l]
            feats = head.transformer.sampling_layout([f.view(B, V, *f.shape[1:]) for f in feats])
            outs = head.forward_geometry(feats, occ2img.to(feats[0].dtype), self.image_h, self.image_w)
            points = head.decode_points(outs['all_refine_pts'][-1])                # [B, Q, P, 3] metres
            scores = outs['all_cls_scores'][-1].sigmoid()                           # [B, Q, P, C]
            if not self.with_grid:
                return points, scores
            return points, scores, head.get_occ_grids(outs)                        # uint8 [B, X, Y, Z]


def ring_rig(num_frames, num_views, image_h, image_w, metres_per_frame=0.5, height=1.5):
    """occ2img `[T*N, 4, 4]` float32 of a ring of N pinhole cameras, frame-major.

    Camera n looks horizontally at yaw 360 n / N degrees (0 = ego +x) from `height` metres above the
    ego origin, focal length W / 2 (90 degrees across), principal point at the image centre; in frame
    t the car stood `metres_per_frame` * t metres behind (-x) its key-frame position. A plausible rig
    for checking the export: most sampling points project into some camera.
    """
    intrinsic = np.array([[image_w / 2, 0, image_w / 2, 0], [0, image_w / 2, image_h / 2, 0],
                          [0, 0, 1, 0], [0, 0, 0, 1]])
    mats = []
    for t in range(num_frames):
        for n in range(num_views):
            yaw = 2 * np.pi * n / num_views
            forward = np.array([np.cos(yaw), np.sin(yaw), 0.0])
            right = np.array([np.sin(yaw), -np.cos(yaw), 0.0])
            rotation = np.stack([right, [0.0, 0.0, -1.0], forward])               # ego -> camera (x right, y down)
            centre = np.array([-metres_per_frame * t, 0.0, height])
            extrinsic = np.eye(4)
            extrinsic[:3, :3], extrinsic[:3, 3] = rotation, -rotation @ centre
            mats.append(intrinsic @ extrinsic)
    return np.stack(mats).astype(np.float32)


def rig_inputs(wrapper, seed=0):
    """(img, occ2img) of the wrapper's shapes: uniform random uint8 images and `ring_rig`."""
    transformer = wrapper.detector.pts_bbox_head.transformer
    generator = torch.Generator().manual_seed(seed)
    img = torch.randint(0, 256, wrapper.input_shapes['img'], generator=generator, dtype=torch.uint8)
    occ2img = ring_rig(transformer.num_frames, transformer.num_views, wrapper.image_h, wrapper.image_w)
    return img, torch.from_numpy(occ2img)[None]


def _sort_symbolic(g, input, *args):
    """aten::sort and its `stable=True` overload (the post-processing's "first points of a cell") -> ONNX TopK
    over the whole axis. The stock symbolic takes the overload's `stable` flag for `dim`. TopK is stable as
    specified: of equal values the one with the lower index comes first, which is `stable=True`'s order."""
    from torch.onnx import symbolic_helper
    dim, descending = args[-2:]        # (stable, dim, descending) or (dim, descending)
    return symbolic_helper._sort_helper(g, input, symbolic_helper._get_const(dim, 'i', 'dim'),
                                        descending=symbolic_helper._get_const(descending, 'b', 'descending'))


# Symbolics of the TorchScript-based exporter for the ATen ops of the test step that the stock ones do not cover
_SYMBOLICS = {'aten::sort': _sort_symbolic}


@contextlib.contextmanager
def _export_symbolics(opset):
    """`_SYMBOLICS` registered for `opset` within the block (the exporter's registry is global)."""
    from torch.onnx import register_custom_op_symbolic, unregister_custom_op_symbolic
    for name, symbolic in _SYMBOLICS.items():
        register_custom_op_symbolic(name, symbolic, opset)
    try:
        yield
    finally:
        for name in _SYMBOLICS:
            unregister_custom_op_symbolic(name, opset)


def check_opset(opset):
    """Refuse an opset without the GridSample the sampling op needs (5-D input: opset 20 on)."""
    if opset < EXPORT_OPSET:
        raise ExportError(f'--opset {opset}: the sampling op exports as a 5-D GridSample, which ONNX has from '
                          f'opset {EXPORT_OPSET} on; use --opset {EXPORT_OPSET} or later')


def export_onnx(wrapper, inputs, path, opset=EXPORT_OPSET):
    """Write `wrapper` traced on `inputs` (img, occ2img) to the ONNX file `path` (static shapes).

    The TorchScript-based exporter (`dynamo=False`) with the symbolics of `_SYMBOLICS`. The torch.export-based
    one (`dynamo=True`) stops at the sampling op's host-side range check of the view index, a data-dependent
    branch (docs/deploy.md).
    """
    check_opset(opset)
    import warnings
    with torch.no_grad(), warnings.catch_warnings(), _export_symbolics(int(opset)):
        # the traced graph has static shapes by design: the tracer's notes on Python values taken from tensors
        # (shape checks, the sampling op's view-range check) and the folder's on the BGR->RGB flip (a Slice
        # of step -1 it does not fold) are expected
        warnings.filterwarnings('ignore', category=torch.jit.TracerWarning)
        warnings.filterwarnings('ignore', message='Constant folding - Only steps=1 can be constant folded')
        # the TorchScript-based exporter is the one that covers the test step (docstring): chosen, not legacy use
        warnings.filterwarnings('ignore', message='You are using the legacy TorchScript-based ONNX export')
        torch.onnx.export(wrapper, tuple(inputs), path, input_names=['img', 'occ2img'],
                          output_names=wrapper.output_names, opset_version=int(opset), dynamo=False,
                          do_constant_folding=True)
    return path


def describe_onnx(path):
    """[(kind, name, element type, shape)] of the graph's inputs then outputs, read with onnx."""
    import onnx
    model = onnx.load(path, load_external_data=False)
    rows = []
    for kind, values in (('input', model.graph.input), ('output', model.graph.output)):
        for value in values:
            tensor_type = value.type.tensor_type
            dims = [d.dim_value if d.HasField('dim_value') else d.dim_param for d in tensor_type.shape.dim]
            rows.append((kind, value.name, onnx.TensorProto.DataType.Name(tensor_type.elem_type).lower(), dims))
    return rows


def onnxruntime_session(path, providers=('CPUExecutionProvider',), options=None):
    """An onnxruntime session of the graph at `path` on `providers`."""
    import onnxruntime as ort
    return ort.InferenceSession(path, sess_options=options, providers=list(providers))


def run_onnxruntime(session_or_path, inputs):
    """The graph's outputs (numpy, in `output_names` order) for inputs (img, occ2img) (torch tensors on the CPU)."""
    session = session_or_path if not isinstance(session_or_path, str) else onnxruntime_session(session_or_path)
    feeds = {arg.name: np.ascontiguousarray(value.numpy()) for arg, value in zip(session.get_inputs(), inputs)}
    return session.run(None, feeds)


# onnxruntime's float32 error against the float64 model may exceed PyTorch's float32 error by this factor: both
# round the same reductions (convolutions, products, means, variances), each in its own order and blocking
ROUNDING_FACTOR = 4
# ... plus this many float32 ulps of the output's magnitude: onnxruntime evaluates sigmoid and exp with
# polynomial approximations accurate to a few ulps of their range (1 for a probability), not of the result
ULP_FLOOR = 4
# PyTorch's float32 error above this fraction of an output's magnitude is no rounding: some discrete decision
# (a point's camera, a border test) came out otherwise in float32 than in float64
DECISION_FLIP_FRACTION = 2.0 ** -10
# the magnitude of an output for the ulp floor: its largest value, at least this (probabilities range over [0, 1])
OUTPUT_RANGE = dict(scores=1.0)


def check_export(wrapper, path, inputs):
    """The ONNX graph run by onnxruntime (CPU) against the wrapper in PyTorch, on `inputs`.

    Tolerance of the points and scores: both run in float32, summing convolutions and products in
    their own orders. The rounding of this very input is measured against the wrapper run in float64:
    `torch_err` = max |PyTorch float32 - float64|. onnxruntime's result passes when its own error
    `ort_err` = max |onnxruntime - float64| is at most `ROUNDING_FACTOR` * torch_err + `ULP_FLOOR` float32
    ulps of the output's magnitude (its largest value; 1 for the probabilities). The grid (discrete labels)
    is compared voxel by voxel: a voxel may change only where a point or a cell's mean score lies within
    that tolerance of a decision boundary (a cell face, the score threshold, the centroid distance,
    another class's score).

    Returns:
        dict: per float output `{max_diff, torch_err, ort_err, tolerance, decisions_stable, ok}` (max_diff:
        max |onnxruntime - PyTorch float32|; decisions_stable: torch_err below `DECISION_FLIP_FRACTION` of
        the largest value); `grid` (when exported): `{differing, occupied_torch, occupied_ort}` voxels.
    """
    session = onnxruntime_session(path)
    with torch.no_grad():
        expected = [t.numpy() for t in wrapper(*inputs)]
        wrapper64 = copy.deepcopy(wrapper).double()
        exact = [t.numpy() for t in wrapper64(inputs[0], inputs[1].double())]
    got = run_onnxruntime(session, inputs)
    report = {}
    for name, torch32, ort32, reference in zip(wrapper.output_names, expected, got, exact):
        if name == 'grid':
            free = wrapper.detector.pts_bbox_head.empty_label
            report[name] = dict(differing=int((torch32 != ort32).sum()), occupied_torch=int((torch32 != free).sum()),
                                occupied_ort=int((ort32 != free).sum()))
            continue
        scale = max(float(np.abs(reference).max()), OUTPUT_RANGE.get(name, 0.0))
        torch_err = float(np.abs(torch32 - reference).max())
        ort_err = float(np.abs(ort32 - reference).max())
        tolerance = ROUNDING_FACTOR * torch_err + ULP_FLOOR * float(np.spacing(np.float32(scale)))
        report[name] = dict(max_diff=float(np.abs(torch32 - ort32).max()), torch_err=torch_err, ort_err=ort_err,
                            tolerance=tolerance, decisions_stable=torch_err <= DECISION_FLIP_FRACTION * scale,
                            ok=ort_err <= tolerance)
    return report
