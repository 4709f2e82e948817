"""How OPS models are executed, apart from what they compute (models/): the execution policy
(`ExecutionPolicy`, presets 'faithful' and 'fast', accel/policy.py), `accelerate(model, policy)`
(accel/accelerate.py), the fused and fast modules (accel/modules.py) and their kernels (accel/kernels.py,
accel/fused_attention.py; core/compiled.py builds them), the precision table (accel/precision.py) and the CUDA graph
wrappers (accel/cuda_graph.py). docs/architecture.md, "Execution policies"."""
from .accelerate import AcceleratedDetector, accelerate, parse_losses_lazy
from .policy import PRESETS, ExecutionConfigError, ExecutionPolicy, policy_from_config

__all__ = ['ExecutionPolicy', 'PRESETS', 'policy_from_config', 'ExecutionConfigError', 'accelerate',
           'AcceleratedDetector', 'parse_losses_lazy']
