"""Loading weights: full official OPS/OPUS checkpoints (strict) and the nuImages ResNet-50 backbone.

Where the files come from: pretrain/README.md.
"""
import os
import re
import warnings

import torch

__all__ = ['load_checkpoint_strict', 'load_pretrained_backbone', 'read_state_dict', 'CheckpointMismatchError',
           'PRETRAIN_BACKBONE']

PRETRAIN_BACKBONE = 'pretrain/cascade_mask_rcnn_r50_fpn_coco-20e_20e_nuim_20201009_124951-40963960.pth'


class CheckpointMismatchError(RuntimeError):
    """The checkpoint's parameter names or shapes do not match the model."""


def _load_file(path, what):
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f'{what} not found: {path!r}. See pretrain/README.md for where to download it '
            f'(the nuImages backbone goes to {PRETRAIN_BACKBONE}; official OPS/OPUS checkpoints are passed '
            f'with --weights PATH).')
    try:
        return torch.load(path, map_location='cpu', weights_only=True)
    except Exception as exc:  # pickled extras in `meta` (numpy, mmcv objects) need the full unpickler
        warnings.warn(f'{path}: not loadable with weights_only=True ({type(exc).__name__}); loading it with the '
                      f'full unpickler, which runs code from the file: only do this for files you trust.')
        return torch.load(path, map_location='cpu', weights_only=False)


def read_state_dict(path, what='checkpoint'):
    """Read `path` -> (state_dict, meta). Accepts `{'state_dict': ...}` (mmcv) or a bare state dict; strips
    a leading `module.` (saved from a DataParallel/DDP wrapper)."""
    ckpt = _load_file(path, what)
    if not isinstance(ckpt, dict):
        raise TypeError(f'{path}: expected a dict (a state dict or {{"state_dict": ...}}), got {type(ckpt).__name__}')
    state = ckpt.get('state_dict', ckpt)
    meta = ckpt.get('meta', {}) if 'state_dict' in ckpt else {}
    if not all(isinstance(v, torch.Tensor) for v in state.values()):
        bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)][:5]
        raise TypeError(f'{path}: entries {bad} are not tensors; is this a model checkpoint?')
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


def load_checkpoint_strict(model, path):
    """Load a full checkpoint into `model` with strict name and shape checking.

    Args:
        model (nn.Module): the detector (unwrapped or DataParallel/DDP-wrapped).
        path (str): `.pth` file, `{'state_dict': ...}` or a bare state dict.
    Returns:
        dict: the checkpoint's `meta` ({} when absent).
    Raises:
        FileNotFoundError: no such file (the message says where checkpoints come from).
        CheckpointMismatchError: missing / unexpected keys or shape mismatches, all listed.
    """
    model = getattr(model, 'module', model)
    state, meta = read_state_dict(path, 'checkpoint')
    own = model.state_dict()
    # mmcv 1.x's save_checkpoint also writes non-persistent buffers (e.g. the image mean/std), which
    # are constants of the model, not weights: ignore them.
    state = {k: v for k, v in state.items() if k not in non_persistent_buffer_names(model)}
    missing = set(own) - set(state)
    unexpected = set(state) - set(own)
    mismatched = [f'{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}'
                  for k in sorted(set(own) & set(state)) if state[k].shape != own[k].shape]
    if missing or unexpected or mismatched:
        lines = [f'checkpoint {path} does not match the model {type(model).__name__} '
                 f'({len(own)} entries in the model, {len(state)} in the file):']
        if missing:
            lines.append(f'  missing in the checkpoint ({len(missing)}): {_fmt(missing)}')
        if unexpected:
            lines.append(f'  unexpected in the checkpoint ({len(unexpected)}): {_fmt(unexpected)}')
        if mismatched:
            lines.append(f'  shape mismatches ({len(mismatched)}): {"; ".join(mismatched[:20])}')
        lines.append('  Check that the config matches the checkpoint (variant T/S/M/L: num_query, num_points, '
                     'num_refines).')
        raise CheckpointMismatchError('\n'.join(lines))
    model.load_state_dict(state, strict=True)
    return meta


def load_pretrained_backbone(model, path=PRETRAIN_BACKBONE, revise_keys=((r'^backbone', 'img_backbone'),),
                             logger=None):
    """Load the image backbone from a detection checkpoint (nuImages Cascade Mask R-CNN R50), spec 2.5.

    Keys are renamed with `revise_keys` (regex, replacement) and only entries whose renamed key exists in
    the model with the same shape are loaded; with the default renaming these are exactly the ResNet
    weights and BN statistics (the checkpoint's neck / rpn_head / roi_head entries are ignored, so the FPN
    keeps its own initialisation, as in the original).

    Returns:
        dict: `loaded` (list of model keys loaded), `ignored` (checkpoint keys not used),
        `not_loaded` (model keys under the renamed prefixes that the checkpoint lacks).
    Raises:
        FileNotFoundError, CheckpointMismatchError (shape mismatches, or nothing matched).
    """
    model = getattr(model, 'module', model)
    state, _ = read_state_dict(path, 'pretrained backbone')
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
