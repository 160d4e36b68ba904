"""xt-plugins: xT (nested tokenization for huge images) for timm, TorchGeo and MONAI.

Importing the package registers every ``xt_<backbone>_<context>`` model with timm.
"""

from .models import BACKBONES, CONTEXTS, create_model, model_names
from .nn import RegionGrid, XTModel

__version__ = "0.1.0"

__all__ = ["BACKBONES", "CONTEXTS", "RegionGrid", "XTModel", "create_model", "model_names", "__version__"]
