"""Framework-free xT model pieces (torch + timm only; no TorchGeo or MONAI imports)."""

from .context import CONTEXT_ENCODERS, ContextEncoder, build_context, register_context
from .heads import ClassifierHead
from .region import RegionEncoder, RegionWeightsError, load_region_weights
from .tokenize import RegionGrid
from .xt import XTModel

__all__ = [
    "CONTEXT_ENCODERS",
    "ClassifierHead",
    "ContextEncoder",
    "RegionEncoder",
    "RegionGrid",
    "RegionWeightsError",
    "XTModel",
    "build_context",
    "load_region_weights",
    "register_context",
]
