"""The authors' OPUS code (github.com/w1394945493/OPUS at 216dc53) and mmdetection3d v1.0.0rc6, imported at run time
from checkouts given on the pytest command line (tests/fidelity/conftest.py), never copied into this repository.

What `load_reference` does, and why:

* **mmdet3d without its `__init__.py`**: the package object `mmdet3d` is made from the checkout's folder without
  running `mmdet3d/__init__.py`, whose only work is a version guard (mmcv <= 1.7.0; this environment has mmcv-full
  1.7.2, whose ops and registries mmdet3d rc6 uses unchanged) and the import of mmseg; every subpackage
  (`mmdet3d.ops`, `mmdet3d.core`, `mmdet3d.models`, ...) runs its own `__init__.py` as usual.
* **mmdet3d's Python dependencies** (numba, llvmlite, mmsegmentation 0.30, lyft_dataset_sdk, trimesh, plyfile,
  prettytable, wcwidth) are not in the project's environment; `--mmdet3d-deps DIR` names a `pip install --target`
  folder holding them (docs/method.md, "Fidelity against the authors' code"), put on `sys.path` by this loader only.
* **The authors' package under another name**: their `models` package would clash with ours, so it is loaded as
  `opus_authors` (a package object whose `__path__` is their `models/` folder), again without its `__init__.py`
  (which imports every backbone, including EVA02 and VoVNet, that OPUS-Fusion does not use). Their relative imports
  (`..bbox.utils`, `..utils`, `..csrc.wrapper`) resolve inside it.
* **Registries**: both code bases register the names `OPUSV1Fusion`, `OPUSV1FusionHead` and
  `OPUSV1FusionTransformer` in mmdet's registries. The authors' registrations are kept aside while their modules
  import, and `authors_registry()` puts them in place only while the authors' models are built, so the two never
  see each other's classes.
* **CUDA-only ops, stood in** by CPU equivalents written here from the kernels' sources (mmcv v1.7.2), never from
  this project's code under test:
  - `furthest_point_sample` (through `mmdet3d.ops`; a module attribute of their head):
    `furthest_point_sample_kernel`, the kernel's arithmetic and its block reduction (per-thread first maximum over
    a stride of `block_size`, then the shared-memory tree that keeps the lower thread on ties); nvcc's possible FMA
    contraction of the squared distance (one rounding less) is not reproduced;
  - `gather_points` (their head): `torch.gather`;
  - `knn` (their head's loss): `knn_brute_force`, squared distances with the kernel's expression and the first
    minimum in index order (the kernel's strict `<` scan). For float64 inputs the kernel keeps its running best in
    a float32 variable, so it could keep an earlier point whose distance ties a later one's within float32
    rounding; the stand-in compares in the inputs' dtype;
  - mmcv's sparse convolutions (`SubMConv3d`, `SparseConv3d`, which mmdet3d rc6 uses without spconv 2): their
    rulebook `get_indice_pairs` and the gather-GEMM-scatter `indice_conv` / `indice_subm_conv` are CUDA-only in
    mmcv-full 1.7.2 ("get_indice_pairs is not implemented on CPU"); `get_indice_pairs_cpu` and `indice_conv_cpu`
    replace them for CPU tensors (`install_cpu_sparse_conv`), with spconv 1.x's index semantics (mmcv's
    `getValidOutPos`); the modules around them (mmdet3d's SparseEncoder, SparseBasicBlock, BatchNorm, ReLU,
    `SparseConvTensor.dense`) are the originals;
  - the hard voxelisation with `deterministic=False` (the configs' setting) has only a CUDA kernel; the tests
    switch the authors' layer to `deterministic=True`, mmcv's own CPU kernel (voxels in the order of their first
    point, points in input order: the outcome docs/method.md describes ours as reproducing).
* Everything else runs the authors' own code on the CPU: their `msmv_sampling` falls back to their
  `msmv_sampling_pytorch` (grid_sample) when the CUDA extension is absent (it allocates its accumulator in torch's
  default dtype: float64 runs set that to float64), mmdet's focal loss has a PyTorch path.

`--authors-code` and `--mmdet3d-code` name the two source trees (tests/fidelity/conftest.py).
"""
import contextlib
import importlib
import itertools
import math
import os.path as osp
import sys
import types

import torch

AUTHORS_PACKAGE = 'opus_authors'
# the authors' OPUS-Fusion-T config, relative to their checkout
FUSION_T_CONFIG = 'configs/opusv1-fusion_nusc-occ3d/opusv1-fusion-t_r50_704x256_8f_nusc-occ3d_100e.py'

_SET_ASIDE = []          # (registry, name, class) of the authors' registrations
_LOADED = {}


# ---------------------------------------------------------------------------------------------- CUDA stand-ins
def furthest_point_sample_kernel(points_xyz, num_points):
    """mmcv's CUDA `furthest_point_sample` (v1.7.2 `furthest_point_sampling_forward_cuda_kernel`) in PyTorch.

    Args:
        points_xyz (Tensor): `[B, N, 3]` float32.
        num_points (int): M.
    Returns:
        Tensor: int32 `[B, M]`.

    Per batch, one block of `block_size = clamp(2 ** floor(log2 N), 1, 1024)` threads: index 0 first; each step
    every point's `temp` becomes `min(temp, dx*dx + dy*dy + dz*dz)` (from 1e10); thread t scans k = t, t + bs, ...
    keeping its first strict maximum; the threads' (best, index) pairs are reduced by halving, keeping the second
    half's pair only where its value is strictly larger (the lower thread wins ties).
    """
    B, N, _ = points_xyz.shape
    block = max(min(1 << int(math.log(N) / math.log(2.0)), 1024), 1)
    rows = -(-N // block)
    out = torch.zeros(B, num_points, dtype=torch.int32)
    for b in range(B):
        x, y, z = points_xyz[b].t().contiguous()
        temp = torch.full((N,), 1e10, dtype=x.dtype)
        old = 0
        for j in range(1, num_points):
            dx, dy, dz = x - x[old], y - y[old], z - z[old]
            d = dx * dx + dy * dy + dz * dz
            temp = torch.minimum(d, temp)
            # threads' strided scans: row r, column t = point r * block + t; padding never wins (value -1 < 0 <= d)
            grid = torch.full((rows * block,), -1.0, dtype=temp.dtype)
            grid[:N] = temp
            grid = grid.view(rows, block)
            best, row = grid.max(dim=0)                    # first maximum of each column (documented tie rule)
            best_i = row * block + torch.arange(block)
            half = block
            while half > 1:
                half //= 2
                v1, v2, i1, i2 = best[:half], best[half:2 * half], best_i[:half], best_i[half:2 * half]
                best_i = torch.where(v2 > v1, i2, i1)
                best = torch.maximum(v1, v2)
            old = int(best_i[0])
            out[b, j] = old
    return out


def gather_points(features, indices):
    """mmcv's `gather_points`: features `[B, C, N]`, indices int `[B, M]` -> `[B, C, M]`."""
    idx = indices.long()[:, None, :].expand(-1, features.shape[1], -1)
    return torch.gather(features, 2, idx)


def knn_brute_force(k, xyz, center_xyz=None, transposed=False):
    """mmcv's `knn(k, xyz, center_xyz)`: for every centre, the indices of its k nearest points of `xyz`, nearest first.

    Args:
        xyz (Tensor): `[B, N, 3]`; center_xyz (Tensor): `[B, M, 3]` (None: xyz).
    Returns:
        Tensor: int32 `[B, k, M]`.
    Squared distances `(cx - x)^2 + (cy - y)^2 + (cz - z)^2` as the kernel writes them; among equal distances the
    lower index comes first (the kernel's strict `<` scan).
    """
    if center_xyz is None:
        center_xyz = xyz
    if transposed:
        xyz, center_xyz = xyz.transpose(2, 1), center_xyz.transpose(2, 1)
    out = []
    for pts, centres in zip(xyz, center_xyz):
        rows = []
        for chunk in centres.split(2048):
            d = (chunk[:, None, 0] - pts[None, :, 0]) ** 2 + (chunk[:, None, 1] - pts[None, :, 1]) ** 2 + \
                (chunk[:, None, 2] - pts[None, :, 2]) ** 2
            # the first minimum (k = 1) / a stable sort keeps the index order among equal distances
            rows.append(d.argmin(dim=1, keepdim=True) if k == 1 else torch.sort(d, dim=1, stable=True).indices[:, :k])
        out.append(torch.cat(rows).t())
    return torch.stack(out).int()


def _per_axis(value, ndim):
    return list(value) if isinstance(value, (list, tuple)) else [value] * ndim


def _site_keys(batch, coords, shape):
    """int64 keys of sites (b, c_0, c_1, c_2) of a grid `shape`: ((b * S0 + c0) * S1 + c1) * S2 + c2."""
    key = batch
    for axis, size in enumerate(shape):
        key = key * size + coords[:, axis]
    return key


def _match(keys, queries):
    """Row of `keys` equal to each query, -1 where none: a join through `torch.unique` of both (keys distinct)."""
    uniq, inverse = torch.unique(torch.cat([keys, queries]), return_inverse=True)
    row = torch.full((uniq.numel(),), -1, dtype=torch.long)
    row[inverse[:keys.numel()]] = torch.arange(keys.numel())
    return row[inverse[keys.numel():]]


def get_indice_pairs_cpu(indices, batch_size, spatial_shape, ksize=3, stride=1, padding=0, dilation=1,
                         out_padding=0, subm=False, transpose=False, grid=None):
    """mmcv's `get_indice_pairs` (CUDA-only in mmcv-full 1.7.2) for 3D grids, forward convolutions, on the CPU.

    spconv 1.x semantics (which mmcv's kernels carry): kernel tap t = (t0, t1, t2), index (t0 * k1 + t1) * k2 + t2;
    a regular conv links input site i to output site o where i = o * s - p + t * d (per axis; mmcv's
    `getValidOutPos`: t = (i - o * s + p) / d), its output sites are every o reached so (in ascending site order
    here; the kernel's order is its own and does not change the result); a submanifold conv outputs at its input
    sites (same rows) and links o to i = o + t * d - p (the module's padding, k // 2 in mmdet3d's encoder).

    Returns:
        tuple: out sites int32 `[U', 4]` (b, c0, c1, c2), pairs int32 `[K, 2, U]` (input row, output row; -1 past
        each tap's count), counts int32 `[K]` (mmcv's layout).
    """
    ndim = indices.shape[1] - 1
    if ndim != 3 or transpose or grid is not None:
        raise NotImplementedError('the CPU stand-in covers forward 3D sparse convolutions only')
    ksize, stride, padding, dilation = (_per_axis(v, ndim) for v in (ksize, stride, padding, dilation))
    shape = list(spatial_shape)
    batch, coords = indices[:, 0].long(), indices[:, 1:].long()
    in_keys = _site_keys(batch, coords, shape)
    taps = torch.tensor(list(itertools.product(*(range(k) for k in ksize))), dtype=torch.long)
    if subm:
        out_sites, out_shape = indices, shape
        pairs = []
        for tap in taps:
            nb = coords + tap * torch.tensor(dilation) - torch.tensor(padding)
            inside = ((nb >= 0) & (nb < torch.tensor(shape))).all(1)
            src = torch.where(inside, _match(in_keys, _site_keys(batch, nb.clamp(min=0), shape)), -1)
            pairs.append((src, torch.arange(len(indices))))
    else:
        out_shape = [(n + 2 * p - d * (k - 1) - 1) // s + 1
                     for n, k, s, p, d in zip(shape, ksize, stride, padding, dilation)]
        s, p, d = torch.tensor(stride), torch.tensor(padding), torch.tensor(dilation)
        candidates = []
        for tap in taps:
            numerator = coords + p - tap * d                # o * s for a linked output site o
            o = torch.div(numerator, s, rounding_mode='floor')
            ok = ((numerator % s) == 0).all(1) & (o >= 0).all(1) & (o < torch.tensor(out_shape)).all(1)
            candidates.append((ok, o))
        out_keys = torch.unique(torch.cat([_site_keys(batch[ok], o[ok], out_shape) for ok, o in candidates]))
        rest, sites = out_keys, []
        for size in reversed(out_shape):
            sites.append(rest % size)
            rest = torch.div(rest, size, rounding_mode='floor')
        out_sites = torch.stack([rest] + sites[::-1], dim=1).int()
        pairs = []
        for ok, o in candidates:
            dst = torch.where(ok, _match(out_keys, _site_keys(batch, o.clamp(min=0), out_shape)), -1)
            pairs.append((torch.arange(len(indices)), dst))
    table = torch.full((len(taps), 2, len(indices)), -1, dtype=torch.int32)
    counts = torch.zeros(len(taps), dtype=torch.int32)
    for k, (src, dst) in enumerate(pairs):
        keep = (src >= 0) & (dst >= 0)
        n = int(keep.sum())
        table[k, 0, :n], table[k, 1, :n], counts[k] = src[keep].int(), dst[keep].int(), n
    return out_sites, table, counts


def indice_conv_cpu(features, filters, indice_pairs, indice_pair_num, num_activate_out, *args):
    """mmcv's `indice_conv` / `indice_subm_conv` (forward) on the CPU: out[o] = sum over taps k and linked rows
    (i, o) of features[i] @ W_k, W = filters `[*k, C_in, C_out]` viewed `[K, C_in, C_out]` (mmcv's layout)."""
    weights = filters.reshape(-1, filters.shape[-2], filters.shape[-1])
    out = features.new_zeros(int(num_activate_out), weights.shape[-1])
    for k in range(weights.shape[0]):
        n = int(indice_pair_num[k])
        src, dst = indice_pairs[k, 0, :n].long(), indice_pairs[k, 1, :n].long()
        out.index_add_(0, dst, features[src] @ weights[k])
    return out


def _cpu_or_cuda(cpu_function, cuda_function, tensor_argument=0):
    """`cpu_function` for CPU tensors, mmcv's own for CUDA tensors."""
    def call(*args, **kwargs):
        return (cuda_function if args[tensor_argument].is_cuda else cpu_function)(*args, **kwargs)
    return call


def install_cpu_sparse_conv(set_attribute=setattr):
    """Route mmcv's sparse-convolution ops to the CPU stand-ins above for CPU tensors (mmcv.ops.sparse_conv calls
    them as `ops.get_indice_pairs`, `Fsp.indice_conv`, `Fsp.indice_subm_conv`: module attributes).
    `set_attribute`: pytest's `monkeypatch.setattr` to undo it after a test (default: for the process)."""
    from mmcv.ops import sparse_functional, sparse_ops
    if getattr(sparse_ops.get_indice_pairs, 'cpu_stand_in', False):
        return
    pairs = _cpu_or_cuda(get_indice_pairs_cpu, sparse_ops.get_indice_pairs)
    pairs.cpu_stand_in = True
    set_attribute(sparse_ops, 'get_indice_pairs', pairs)
    set_attribute(sparse_functional, 'indice_conv', _cpu_or_cuda(indice_conv_cpu, sparse_functional.indice_conv))
    set_attribute(sparse_functional, 'indice_subm_conv',
                  _cpu_or_cuda(indice_conv_cpu, sparse_functional.indice_subm_conv))


# ---------------------------------------------------------------------------------------------- import machinery
def _package(name, folder):
    """A package object for `folder` that does not run its `__init__.py`."""
    pkg = types.ModuleType(name)
    pkg.__path__ = [folder]
    pkg.__file__ = osp.join(folder, '__init__.py')
    pkg.__package__ = name
    sys.modules[name] = pkg
    return pkg


@contextlib.contextmanager
def _set_aside_registrations():
    """While the authors' modules import, their `register_module` calls are recorded instead of registered."""
    from mmcv.utils import Registry
    original = Registry._register_module

    def register(self, module, module_name=None, force=False):
        if getattr(module, '__module__', '').startswith(AUTHORS_PACKAGE + '.'):
            names = module.__name__ if module_name is None else module_name
            for name in [names] if isinstance(names, str) else names:
                _SET_ASIDE.append((self, name, module))
            return
        return original(self, module, module_name, force)

    Registry._register_module = register
    try:
        yield
    finally:
        Registry._register_module = original


@contextlib.contextmanager
def authors_registry():
    """The authors' classes in the registries (in place of ours under the same names) for the duration."""
    missing = object()
    saved = [(registry, name, registry._module_dict.get(name, missing)) for registry, name, _ in _SET_ASIDE]
    for registry, name, module in _SET_ASIDE:
        registry._module_dict[name] = module
    try:
        yield
    finally:
        for registry, name, previous in reversed(saved):
            if previous is missing:
                registry._module_dict.pop(name, None)
            else:
                registry._module_dict[name] = previous


def load_reference(authors_root, mmdet3d_root, deps=None):
    """Import the authors' OPUS-Fusion modules (module docstring).

    Returns:
        SimpleNamespace: `detector`, `head`, `transformer`, `sampling` (the authors' modules
        `models/opusv1_fusion/{opus,opus_head,opus_transformer,opus_sampling}.py`), `build_model` (mmdet3d's, to be
        called inside `authors_registry()`), `config_file` (their OPUS-Fusion-T config).
    """
    key = (osp.abspath(authors_root), osp.abspath(mmdet3d_root), deps and osp.abspath(deps))
    if key in _LOADED:
        return _LOADED[key]
    if _LOADED:
        raise RuntimeError(f'the authors\' code is already loaded from {next(iter(_LOADED))}')
    for path, what in ((osp.join(authors_root, 'models', 'opusv1_fusion', 'opus_head.py'), '--authors-code'),
                       (osp.join(mmdet3d_root, 'mmdet3d', 'models', 'detectors', 'mvx_two_stage.py'),
                        '--mmdet3d-code')):
        if not osp.isfile(path):
            raise FileNotFoundError(f'{what}: {path} does not exist (see docs/method.md, "Fidelity against the '
                                    f'authors\' code", for the checkouts)')
    import models  # noqa: F401  (ours first: their registrations must not take our names)
    for path in (deps, mmdet3d_root):
        if path and path not in sys.path:
            sys.path.insert(0, path)
    if 'mmdet3d' not in sys.modules:
        _package('mmdet3d', osp.join(mmdet3d_root, 'mmdet3d'))
    for name in ('mmdet3d.ops', 'mmdet3d.core', 'mmdet3d.models'):
        importlib.import_module(name)
    _package(AUTHORS_PACKAGE, osp.join(authors_root, 'models'))
    with _set_aside_registrations():
        detector = importlib.import_module(f'{AUTHORS_PACKAGE}.opusv1_fusion.opus')
        head = importlib.import_module(f'{AUTHORS_PACKAGE}.opusv1_fusion.opus_head')
        transformer = importlib.import_module(f'{AUTHORS_PACKAGE}.opusv1_fusion.opus_transformer')
        sampling = importlib.import_module(f'{AUTHORS_PACKAGE}.opusv1_fusion.opus_sampling')
    head.furthest_point_sample = furthest_point_sample_kernel
    head.gather_points = gather_points
    head.knn = knn_brute_force
    install_cpu_sparse_conv()
    from mmdet3d.models import build_model
    ref = types.SimpleNamespace(detector=detector, head=head, transformer=transformer, sampling=sampling,
                                build_model=build_model, config_file=osp.join(authors_root, FUSION_T_CONFIG))
    _LOADED[key] = ref
    return ref


# ---------------------------------------------------------------------------------------------- state dicts
def to_our_state_dict(authors_state, sparse_keys):
    """The authors' state dict in our layout: the sparse convolutions' weights of mmcv's layout
    `[k_z, k_y, k_x, C_in, C_out]` (mmcv.ops, which mmdet3d rc6 uses without spconv 2) moved to spconv 2.x's
    `[C_out, k_z, k_y, k_x, C_in]` (the released checkpoints' and ours; mmdet3d converts the same way when it loads
    an spconv 2 checkpoint); every other tensor as it is.

    Args:
        authors_state (dict): the authors' model's `state_dict()`.
        sparse_keys (set[str]): keys of the sparse convolutions' weights (5-dim).
    """
    out = {}
    for key, value in authors_state.items():
        out[key] = value.permute(4, 0, 1, 2, 3).contiguous() if key in sparse_keys else value
    return out
