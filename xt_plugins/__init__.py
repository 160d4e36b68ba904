"""xt-plugins: xT (nested tokenization for huge images) for timm, TorchGeo and MONAI.

Importing the package registers every ``xt_<backbone>_<context>`` model with timm.
"""

from .models import BACKBONES, CONTEXTS, create_model, model_names
from .nn import RegionGrid, XTModel
from .nn.streaming import StreamResult, stream_forward, stream_predict

__version__ = "0.1.0"

__all__ = [
    "BACKBONES",
    "CONTEXTS",
    "RegionGrid",
    "StreamResult",
    "XTModel",
    "__version__",
    "create_model",
    "model_names",
    "stream_forward",
    "stream_predict",
]
