"""xt-plugins: xT (nested tokenization for huge images) for timm, TorchGeo and MONAI.

Importing the package registers every ``xt_<backbone>_<context>`` model with timm (the
registry TorchGeo's tasks and smp's ``tu-`` encoders build from) and makes ``xt_plugins.io``
(image sources and writers) usable.
"""

from . import io
from .infer import StreamResult, stream_forward, stream_predict
from .models import BACKBONES, CONTEXTS, create_model, model_names
from .nn import RegionGrid, XTModel
from .nn.official import load_official_xt

__version__ = "0.1.0"

__all__ = [
    "BACKBONES",
    "CONTEXTS",
    "RegionGrid",
    "StreamResult",
    "XTModel",
    "__version__",
    "create_model",
    "io",
    "load_official_xt",
    "model_names",
    "stream_forward",
    "stream_predict",
]
