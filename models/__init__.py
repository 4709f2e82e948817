"""OPS models: importing this package registers the detectors, heads and transformers with mmdet
(V1: OPS, OPSHead, OPSTransformer; OPUS-V2: OPUSV2, OPUSV2Head, OPUSV2DCDHead, OPUSV2Transformer), and the
project's own registries: point matchers (models/matcher.py), loss criteria (models/criterion.py) and decoder
layers (models/ops_transformer.py)."""
from .ops import OPS
from .ops_head import OPSHead
from .ops_transformer import OPSTransformer
from .opus_fusion import OPUSV1Fusion, OPUSV1FusionHead, OPUSV1FusionTransformer  # noqa: F401  (OPUS-Fusion)
from .opusv2 import OPUSV2
from .opusv2_head import OPUSV2DCDHead, OPUSV2Head
from .opusv2_transformer import OPUSV2Transformer
from .weights import load_checkpoint_strict, load_pretrained_backbone

__all__ = ['OPS', 'OPSHead', 'OPSTransformer', 'OPUSV2', 'OPUSV2Head', 'OPUSV2DCDHead', 'OPUSV2Transformer',
           'load_checkpoint_strict', 'load_pretrained_backbone']
