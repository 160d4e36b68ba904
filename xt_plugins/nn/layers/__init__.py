"""Framework-free layers: the Mamba-1 mixer and its residual block.

.. versionadded:: 0.2
"""

from .mamba import Mamba, MambaBlock, MambaState

__all__ = ["Mamba", "MambaBlock", "MambaState"]
