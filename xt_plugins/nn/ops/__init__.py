"""Framework-free tensor ops: the selective scan of Mamba (reference, chunked, autograd, kernels).

.. versionadded:: 0.2
"""

from .scan_kernels import HAS_CAUSAL_CONV1D, HAS_MAMBA_SSM, kernel_scan_with_state
from .selective_scan import ScanInputs, auto_chunk_size, selective_scan, selective_scan_ref

__all__ = [
    "HAS_CAUSAL_CONV1D",
    "HAS_MAMBA_SSM",
    "ScanInputs",
    "auto_chunk_size",
    "kernel_scan_with_state",
    "selective_scan",
    "selective_scan_ref",
]
