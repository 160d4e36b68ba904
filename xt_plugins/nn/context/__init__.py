"""Context encoders over the sequence of region tokens, behind one registry.

Importing this package registers ``none``, ``txl``, ``hyper`` and ``mamba``.
"""

from .base import CONTEXT_ENCODERS, ContextEncoder, build_context, register_context, sincos_2d
from .hyper import HyperContext
from .mamba import MambaContext
from .none import NoContext
from .txl import TransformerXLContext

__all__ = [
    "CONTEXT_ENCODERS",
    "ContextEncoder",
    "build_context",
    "register_context",
    "sincos_2d",
    "NoContext",
    "TransformerXLContext",
    "HyperContext",
    "MambaContext",
]
