"""Framework-free tensor ops: the selective scan of Mamba (reference, chunked, autograd, kernels).

Modules: :mod:`.selective_scan` (operands, reference, dispatch), :mod:`.scan_chunked` (no-grad,
streaming), :mod:`.scan_autograd` (differentiable; also what ``torch.compile`` traces),
:mod:`.scan_kernels` (``mamba_ssm``'s CUDA kernels), :mod:`.threads` (the CPU thread governor).
The package attribute ``selective_scan`` is the function: import the module's other names with
``from xt_plugins.nn.ops.selective_scan import ...``.

.. versionadded:: 0.2
"""

from . import threads
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
    "threads",
]
