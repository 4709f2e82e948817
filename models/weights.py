"""Loading weights: full official OPS/OPUS checkpoints (strict) and the nuImages ResNet-50 backbone.

Checkpoints are read with torch's restricted unpickler (`weights_only=True`), which builds tensors,
containers and numbers but never calls code named by the file. What mmcv-saved checkpoints hold beyond
that (numpy scalars and arrays in `meta`) is allow-listed in `CHECKPOINT_SAFE_GLOBALS`; any other object
is refused with a message naming the file and the object. `trust=True` (the entry points'
`--trust-checkpoint`) lifts the restriction for a file the user vouches for.

Where the files come from: pretrain/README.md.
"""
import os
import pickle
import re
import warnings

import torch

__all__ = ['load_checkpoint_file', 'load_checkpoint_strict', 'load_pretrained_backbone', 'read_state_dict',
           'CheckpointError', 'UntrustedCheckpointError', 'CheckpointMismatchError', 'CHECKPOINT_SAFE_GLOBALS',
           'PRETRAIN_BACKBONE']

PRETRAIN_BACKBONE = 'pretrain/cascade_mask_rcnn_r50_fpn_coco-20e_20e_nuim_20201009_124951-40963960.pth'
TRUST_HINT = 'pass --trust-checkpoint only if you trust where the file comes from'


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used as it is (empty, truncated, not a checkpoint); the message names it.

    `user_error`: engine/cli.py prints the message without a traceback."""
    user_error = True


class UntrustedCheckpointError(CheckpointError):
    """The checkpoint holds an object a weights file does not need: unpickling it could run code."""


class CheckpointMismatchError(RuntimeError):
    """The checkpoint's parameter names or shapes do not match the model."""
    user_error = True


def _numpy_globals():
    """numpy's pickle entry points for scalars and arrays (numpy 1.x and 2.x module names)."""
    import numpy as np
    core = np.core.multiarray
    found = [np.ndarray, np.dtype]
    for name in ('_reconstruct', 'scalar'):
        fn = getattr(core, name)
        found += [fn, (fn, f'numpy._core.multiarray.{name}')]  # numpy 2 writes numpy._core
    dtypes = getattr(np, 'dtypes', None)  # the dtype classes (numpy >= 1.25)
    if dtypes is not None:
        found += [getattr(dtypes, n) for n in dir(dtypes) if n.endswith('DType') and n != 'ObjectDType']
    return found


def checkpoint_safe_globals():
    """The objects besides tensors and Python containers that OPS/OPUS/mmcv checkpoints may hold.

    mmcv's save_checkpoint writes `state_dict` (an OrderedDict of tensors, allowed by torch),
    `optimizer` (dicts, lists, numbers) and `meta` (mmcv_version, time, config text, CLASSES, epoch,
    iter, seed, hook_msgs); hooks and older tools may leave numpy scalars or small arrays in `meta`.
    """
    return _numpy_globals()


CHECKPOINT_SAFE_GLOBALS = None  # filled on first use (numpy imported lazily)


def _file_kind(path):
    """'zip' (torch.save's format), 'pickle' (the legacy format, or a bare pickle) or None (neither)."""
    with open(path, 'rb') as f:
        head = f.read(4)
    if head.startswith(b'PK\x03\x04'):
        return 'zip'
    if head[:1] == b'\x80' and head[1:2] in (b'\x02', b'\x03', b'\x04', b'\x05'):
        return 'pickle'
    return None


def _truncated(path, size):
    return f'{path}: the file is truncated or corrupt ({size:,} bytes): the download or the save was interrupted'


def _describe_failure(path, exc, size):
    """(message, untrusted) for an exception of torch.load(weights_only=True) on `path`."""
    text = str(exc)
    if isinstance(exc, EOFError) or 'Ran out of input' in text:
        return f'{path}: the file is truncated ({size:,} bytes): the download or the save was interrupted', False
    if 'PytorchStreamReader' in text or 'zip archive' in text or 'central directory' in text:
        return (f'{path}: truncated or corrupt ({size:,} bytes, not a complete PyTorch zip archive): '
                f'the download or the save was interrupted'), False
    match = re.search(r'GLOBAL ([A-Za-z_][\w]*(?:\.[A-Za-z_]\w*)+)', text)
    if match:
        name = match.group(1)
        try:  # zip checkpoints list all their globals without unpickling anything
            names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
            allowed = {f'{g.__module__}.{g.__qualname__}' for g in CHECKPOINT_SAFE_GLOBALS if not isinstance(g, tuple)}
            allowed |= {g[1] for g in CHECKPOINT_SAFE_GLOBALS if isinstance(g, tuple)}
            names = [n for n in names if n not in allowed] or [name]
        except Exception:
            names = [name]
        return (f'{path}: refused: the file holds {", ".join(names[:5])}, which a weights file does not need '
                f'(loading it could run code from the file); {TRUST_HINT}'), True
    if 'GLOBAL' in text:  # a name cut short: the file ends inside the pickle
        return _truncated(path, size), False
    if 'Unsupported operand' in text or 'Unsupported class' in text:
        return (f'{path}: not a checkpoint written by torch.save (it holds pickle code a weights file does not '
                f'need); {TRUST_HINT}'), True
    kind = _file_kind(path)
    if kind is None or 'invalid load key' in text or 'magic number' in text:
        return f'{path}: not a PyTorch checkpoint ({size:,} bytes that torch.load cannot read)', False
    if kind == 'pickle' and isinstance(exc, (IndexError, KeyError, ValueError, pickle.UnpicklingError)):
        return _truncated(path, size), False
    detail = text.split('WeightsUnpickler error:', 1)[1] if 'WeightsUnpickler error:' in text else text
    first = next((line.strip() for line in detail.splitlines() if line.strip()), '')
    return f'{path}: cannot read it as a PyTorch checkpoint ({type(exc).__name__}: {first[:200]})', False


def load_checkpoint_file(path, what='checkpoint', trust=False, map_location='cpu'):
    """torch.load `path` without running code from it.

    Args:
        path (str): the `.pth` file.
        what (str): what the file is, for the messages ('checkpoint', 'pretrained backbone', ...).
        trust (bool): the user vouches for the file: load it with the full unpickler.
        map_location: as torch.load.
    Returns:
        the loaded object.
    Raises:
        FileNotFoundError: no such file (the message says where checkpoints come from).
        CheckpointError: empty, truncated or not a checkpoint; UntrustedCheckpointError: it holds other objects.
    """
    global CHECKPOINT_SAFE_GLOBALS
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f'{what} not found: {path!r}. See pretrain/README.md for where to download it '
            f'(the nuImages backbone goes to {PRETRAIN_BACKBONE}; official OPS/OPUS checkpoints are passed '
            f'with --weights PATH).')
    size = os.path.getsize(path)
    if size == 0:
        raise CheckpointError(f'{path}: the {what} file is empty (0 bytes): the download or the save was '
                              f'interrupted; download or write it again')
    if trust:
        try:
            return torch.load(path, map_location=map_location, weights_only=False)
        except Exception as exc:
            raise CheckpointError(_describe_failure(path, exc, size)[0]) from exc
    if CHECKPOINT_SAFE_GLOBALS is None:
        CHECKPOINT_SAFE_GLOBALS = checkpoint_safe_globals()
    try:
        with torch.serialization.safe_globals(CHECKPOINT_SAFE_GLOBALS), warnings.catch_warnings():
            warnings.simplefilter('ignore')  # e.g. "Detected pickle protocol 4": the error below says more
            return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        message, untrusted = _describe_failure(path, exc, size)
        raise (UntrustedCheckpointError if untrusted else CheckpointError)(message) from exc


def read_state_dict(path, what='checkpoint', trust=False):
    """Read `path` -> (state_dict, meta). Accepts `{'state_dict': ...}` (mmcv) or a bare state dict; strips
    a leading `module.` (saved from a DataParallel/DDP wrapper). `trust`: see load_checkpoint_file."""
    ckpt = load_checkpoint_file(path, what, trust=trust)
    if not isinstance(ckpt, dict):
        raise CheckpointError(f'{path}: not a model checkpoint: it holds a {type(ckpt).__name__}, expected a state '
                              f'dict or {{"state_dict": ...}}')
    state = ckpt.get('state_dict', ckpt)
    meta = ckpt.get('meta', {}) if 'state_dict' in ckpt else {}
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)][:5] if isinstance(state, dict) else []
        raise CheckpointError(f'{path}: not a model checkpoint: entries {bad} of its state dict are not tensors')
    state = {k[len('module.'):] if k.startswith('module.') else k: v for k, v in state.items()}
    return state, meta


def _fmt(keys, limit=20):
    keys = sorted(keys)
    more = f' ... and {len(keys) - limit} more' if len(keys) > limit else ''
    return ', '.join(keys[:limit]) + more


def non_persistent_buffer_names(model):
    """Full names of the buffers `model.state_dict()` leaves out (registered with persistent=False)."""
    return {f'{prefix}.{name}' if prefix else name
            for prefix, module in model.named_modules() for name in module._non_persistent_buffers_set}


def load_checkpoint_strict(model, path, trust=False):
    """Load a full checkpoint into `model` with strict name and shape checking.

    Args:
        model (nn.Module): the detector (unwrapped or DataParallel/DDP-wrapped).
        path (str): `.pth` file, `{'state_dict': ...}` or a bare state dict.
        trust (bool): load with the full unpickler (see load_checkpoint_file).
    Returns:
        dict: the checkpoint's `meta` ({} when absent).
    Raises:
        FileNotFoundError: no such file (the message says where checkpoints come from).
        CheckpointError: the file is empty, truncated, not a checkpoint or holds other objects.
        CheckpointMismatchError: missing / unexpected keys or shape mismatches (counts and the first names).
    """
    model = getattr(model, 'module', model)
    state, meta = read_state_dict(path, 'checkpoint', trust=trust)
    own = model.state_dict()
    # mmcv 1.x's save_checkpoint also writes non-persistent buffers (e.g. the image mean/std), which
    # are constants of the model, not weights: ignore them.
    state = {k: v for k, v in state.items() if k not in non_persistent_buffer_names(model)}
    missing = set(own) - set(state)
    unexpected = set(state) - set(own)
    mismatched = [f'{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}'
                  for k in sorted(set(own) & set(state)) if state[k].shape != own[k].shape]
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f'missing in the checkpoint ({len(missing)}): {_fmt(missing, 8)}')
        if unexpected:
            parts.append(f'unexpected in the checkpoint ({len(unexpected)}): {_fmt(unexpected, 8)}')
        if mismatched:
            more = f' ... and {len(mismatched) - 5} more' if len(mismatched) > 5 else ''
            parts.append(f'shape mismatches ({len(mismatched)}): {", ".join(mismatched[:5])}{more}')
        raise CheckpointMismatchError(
            f'checkpoint {path} does not match the model {type(model).__name__} ({len(own)} entries in the model, '
            f'{len(state)} in the file): {"; ".join(parts)}\n'
            f'Check that the config matches the checkpoint (variant T/S/M/L: num_query, num_points, num_refines).')
    model.load_state_dict(state, strict=True)
    return meta


def load_pretrained_backbone(model, path=PRETRAIN_BACKBONE, revise_keys=((r'^backbone', 'img_backbone'),),
                             logger=None, trust=False):
    """Load the image backbone from a detection checkpoint (nuImages Cascade Mask R-CNN R50), pretrain/README.md.

    Keys are renamed with `revise_keys` (regex, replacement) and only entries whose renamed key exists in
    the model with the same shape are loaded; with the default renaming these are exactly the ResNet
    weights and BN statistics (the checkpoint's neck / rpn_head / roi_head entries are ignored, so the FPN
    keeps its own initialisation, as in the original).

    Returns:
        dict: `loaded` (list of model keys loaded), `ignored` (checkpoint keys not used),
        `not_loaded` (model keys under the renamed prefixes that the checkpoint lacks).
    Raises:
        FileNotFoundError, CheckpointError (unreadable file),
        CheckpointMismatchError (shape mismatches, or nothing matched).
    """
    model = getattr(model, 'module', model)
    state, _ = read_state_dict(path, 'pretrained backbone', trust=trust)
    renamed = {}
    for key, value in state.items():
        for pattern, repl in revise_keys:
            key = re.sub(pattern, repl, key)
        renamed[key] = value
    own = model.state_dict()
    matched = [k for k in renamed if k in own]
    mismatched = [f'{k}: checkpoint {tuple(renamed[k].shape)} vs model {tuple(own[k].shape)}'
                  for k in matched if renamed[k].shape != own[k].shape]
    if mismatched:
        raise CheckpointMismatchError(f'{path}: {len(mismatched)} backbone shape mismatches (is the model\'s '
                                      f'backbone a ResNet-50?): {"; ".join(mismatched[:10])}')
    if not matched:
        raise CheckpointMismatchError(f'{path}: no entry matches the model after renaming with {list(revise_keys)}')
    prefixes = {k.split('.')[0] for k in matched}
    not_loaded = sorted(k for k in own if k.split('.')[0] in prefixes and k not in renamed)
    model.load_state_dict({k: renamed[k] for k in matched}, strict=False)
    summary = dict(loaded=matched, ignored=sorted(set(renamed) - set(matched)), not_loaded=not_loaded)
    msg = (f'loaded {len(matched)} tensors from {path} into {", ".join(sorted(prefixes))}; '
           f'{len(summary["ignored"])} checkpoint entries ignored')
    if not_loaded:
        msg += f'; {len(not_loaded)} model entries not in the checkpoint: {_fmt(not_loaded, 10)}'
    if logger is not None:
        logger.info(msg)
    else:
        print(msg)
    return summary
