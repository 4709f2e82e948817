"""OPS models: importing this package registers the detector, head and transformer with mmdet."""
from .ops import OPS
from .ops_head import OPSHead
from .ops_transformer import OPSTransformer
from .weights import load_checkpoint_strict, load_pretrained_backbone

__all__ = ['OPS', 'OPSHead', 'OPSTransformer', 'load_checkpoint_strict', 'load_pretrained_backbone']
