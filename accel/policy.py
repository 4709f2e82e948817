"""The execution policy: how a model is run, as opposed to what it computes (models/).

One frozen `ExecutionPolicy`, built once by the engine from the command line (`--fast`) and the config's
top-level `execution` dict, then applied by `accelerate(model, policy)` (accel/accelerate.py) and read by
the engine for the optimizer side. Two presets:

* 'faithful' (default): the original's arithmetic. fp16 autocast of the backbone in training with mmcv's
  fp16 optimizer hook (the configs' `fp16`) and offline at test time (as the original's multi-GPU test);
  float32 everywhere else; on CUDA the fused modules (accel/modules.py: other kernels, the same float32
  arithmetic summed in other orders) and the device entry points replayed from CUDA graphs.
* 'fast': the fast modules (accel/modules.py), TF32 in the decoder (accel/precision.py,
  'tf32-decoder'), fp16 channels-last backbone at test time, log values kept on the device, fused AdamW,
  no gradient checkpointing.

    execution = dict(preset='fast', train_cuda_graph=False)      # in a config
    policy = policy_from_config(cfg.get('execution'), fast=args.fast)
"""
import dataclasses
from dataclasses import dataclass

import torch

from .modules import KERNEL_TABLES
from .precision import PRECISION_TABLES

__all__ = ['ExecutionPolicy', 'PRESETS', 'policy_from_config', 'ExecutionConfigError', 'AUTOCAST_DTYPES']

AUTOCAST_DTYPES = {None: None, 'fp16': torch.float16, 'bf16': torch.bfloat16}


class ExecutionConfigError(ValueError):
    """A malformed `execution` dict; the message names the key and the choices."""
    user_error = True  # engine/cli.py prints the message without a traceback


@dataclass(frozen=True)
class ExecutionPolicy:
    """How the model is executed.

    Args:
        preset (str): the preset the other fields started from ('faithful' or 'fast').
        kernels (str): which subclasses `accelerate` swaps in (accel/modules.py, `KERNEL_TABLES`): 'reference'
            (none: the models/ code as written), 'fused' (`FUSED_MODULES`: fused kernels on CUDA, float32
            arithmetic) or 'fast' (`FAST_MODULES`: also half-precision attention and folded batch norms).
        precision (str): a table of `accel.precision.PRECISION_TABLES`.
        channels_last (bool): NHWC images into the backbone on CUDA (cuDNN's layout for half precision).
        online_autocast, offline_autocast (str | None): the backbone's autocast dtype at test time, online /
            offline ('fp16', 'bf16' or None = float32), on CUDA.
        train_autocast (str): the backbone's autocast dtype in training on CUDA: 'fp16' (when the config's
            fp16 optimizer hook is on, with its loss scale) or 'bf16' (always, no loss scaling).
        test_cuda_graph, train_cuda_graph (bool): replay the test step / the training decoder (forward and
            backward) from CUDA graphs, for a model whose entry points are graph-capturable
            (`GRAPH_CAPTURABLE`); a graphed training decoder is not checkpointed.
        checkpointing (bool): keep the config's gradient checkpointing (backbone and decoder).
        lazy_logs (bool): training log values stay device tensors (read at the log interval), with the
            sync-free optimizer step (engine/train_step.py).
        fused_optimizer (bool): AdamW's fused kernel, one launch per lr multiplier.
        gpu_decode (bool | 'auto'): the data loaders hand the JPEG bytes to the model, which decodes them on
            the device (nvJPEG on CUDA) with the same augmentation (loaders/pipelines/gpu_decode.py), for
            machines whose CPU cores cannot decode 48 images per sample at the step rate; the engine converts
            the pipelines (`engine.build.apply_gpu_decode`). 'auto' (the fast preset): on where it works (a
            CUDA device with nvJPEG and pipelines without a CPU-only pixel step), else off. The faithful
            preset decodes on the CPU as the original (nvJPEG's pixels differ from libjpeg's by a grey level).
    """
    preset: str = 'faithful'
    kernels: str = 'fused'
    precision: str = 'float32'
    channels_last: bool = False
    online_autocast: str = None
    offline_autocast: str = 'fp16'
    train_autocast: str = 'fp16'
    test_cuda_graph: bool = True
    train_cuda_graph: bool = True
    checkpointing: bool = True
    lazy_logs: bool = False
    fused_optimizer: bool = False
    gpu_decode: object = False

    def __post_init__(self):
        if self.kernels not in KERNEL_TABLES:
            raise ExecutionConfigError(f'execution.kernels={self.kernels!r}; choose one of {list(KERNEL_TABLES)}')
        if self.precision not in PRECISION_TABLES:
            raise ExecutionConfigError(f'execution.precision={self.precision!r} is not a table of '
                                       f'accel/precision.py: {sorted(PRECISION_TABLES)}')
        for key in ('online_autocast', 'offline_autocast', 'train_autocast'):
            value = getattr(self, key)
            if value not in AUTOCAST_DTYPES or (key == 'train_autocast' and value is None):
                choices = ['fp16', 'bf16'] + ([] if key == 'train_autocast' else [None])
                raise ExecutionConfigError(f'execution.{key}={value!r}; choose one of {choices}')
        if self.gpu_decode not in (True, False, 'auto'):
            raise ExecutionConfigError(f'execution.gpu_decode={self.gpu_decode!r}; choose one of True, False, \'auto\'')

    @property
    def precision_table(self):
        """{(phase, part): precision} (accel/precision.py)."""
        return PRECISION_TABLES[self.precision]

    def matmul_precision(self, phase, part):
        """The precision of `part` in `phase` ('train' / 'test'), or None (what encloses it)."""
        return self.precision_table.get((phase, part))

    def describe(self):
        """One line for the logs: the preset and the fields that differ from it."""
        base = PRESETS[self.preset]
        changed = [f'{f.name}={getattr(self, f.name)}' for f in dataclasses.fields(self)
                   if f.name != 'preset' and getattr(self, f.name) != getattr(base, f.name)]
        return f'execution: {self.preset}' + (f' ({", ".join(changed)})' if changed else '')


PRESETS = {
    'faithful': ExecutionPolicy(),
    'fast': ExecutionPolicy(preset='fast', kernels='fast', precision='tf32-decoder', channels_last=True,
                            online_autocast='fp16', offline_autocast='fp16', checkpointing=False, lazy_logs=True,
                            fused_optimizer=True, gpu_decode='auto'),
}


def policy_from_config(execution=None, fast=False, **overrides):
    """The policy of a run: the preset (`fast` -> 'fast', else the dict's `preset`, default 'faithful'), the
    config's `execution` entries, then `overrides` (command-line choices; None values are ignored)."""
    entries = dict(execution or {})
    preset = 'fast' if fast else entries.pop('preset', 'faithful')
    entries.pop('preset', None)
    if preset not in PRESETS:
        raise ExecutionConfigError(f'execution.preset={preset!r}; choose one of {sorted(PRESETS)}')
    entries.update({k: v for k, v in overrides.items() if v is not None})
    known = {f.name for f in dataclasses.fields(ExecutionPolicy)} - {'preset'}
    unknown = sorted(set(entries) - known)
    if unknown:
        raise ExecutionConfigError(f'execution: unknown key(s) {unknown}; known: preset, {", ".join(sorted(known))} '
                                   f'(accel/policy.py)')
    return dataclasses.replace(PRESETS[preset], **entries)
