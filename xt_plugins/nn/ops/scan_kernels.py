"""Adapter for ``mamba_ssm``'s fused CUDA scan (and ``causal_conv1d``), when they import.

``mamba_ssm`` cannot be imported without its CUDA extension; :data:`HAS_MAMBA_SSM` and
:data:`HAS_CAUSAL_CONV1D` say whether the kernels are here. The scan kernel starts from a zero
state; :func:`kernel_scan_with_state` adds an initial state exactly, so streaming can carry it.

.. versionadded:: 0.1
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .selective_scan import _prepare_delta

try:  # the CUDA kernels; importing fails without a CUDA build (OSError, ImportError, ...)
    from mamba_ssm.ops.selective_scan_interface import (
        selective_scan_fn as cuda_selective_scan_fn,
    )

    HAS_MAMBA_SSM = True
except Exception:  # pragma: no cover - depends on the machine
    cuda_selective_scan_fn = None
    HAS_MAMBA_SSM = False

try:
    from causal_conv1d import causal_conv1d_fn

    HAS_CAUSAL_CONV1D = True
except Exception:  # pragma: no cover - depends on the machine
    causal_conv1d_fn = None
    HAS_CAUSAL_CONV1D = False

__all__ = [
    "HAS_MAMBA_SSM",
    "HAS_CAUSAL_CONV1D",
    "cuda_selective_scan_fn",
    "causal_conv1d_fn",
    "kernel_scan_with_state",
]


def kernel_scan_with_state(
    kernel: Callable[..., Any],
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    initial_state: Tensor | None = None,
    chunk_size: int = 2048,
) -> tuple[Tensor, Tensor]:
    """Run a zero-initial-state scan kernel (``mamba_ssm``'s) and add an initial state exactly.

    The arguments after ``kernel`` are those of :class:`~.selective_scan.ScanInputs`, so
    ``kernel_scan_with_state(kernel, *inputs, initial_state=h0)`` works.

    The scan is linear in its state, so the initial state's share is added in closed form:
    ``h_t += exp(A * cumsum(delta)_t) h_0`` (exponents <= 0), i.e.
    ``y_t += sum_n C_t exp(A S_t) h_0``, computed ``chunk_size`` steps at a time.

    Args:
        kernel: ``selective_scan_fn``-like callable (no initial state).
        u: (b, d, l) input.
        delta: (b, d, l) step sizes.
        A: (d, n) state matrix.
        B: (b, n, l) input projection.
        C: (b, n, l) output projection.
        D: (d,) skip weight.
        z: (b, d, l) gate.
        delta_bias: (d,) added to ``delta``.
        delta_softplus: apply softplus to ``delta``.
        initial_state: (b, d, n) state before the first step (None: zeros).
        chunk_size: steps per chunk of the closed-form correction.

    Returns:
        ``(out (b, d, l), last_state (b, d, n) float32)``.
    """
    if initial_state is None:
        return kernel(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state=True)
    y, last = kernel(u, delta, A, B, C, D, None, delta_bias, delta_softplus, return_last_state=True)
    dts = _prepare_delta(delta, delta_bias, delta_softplus).cumsum(-1)  # (b, d, l)
    h0, A = initial_state.float(), A.float()
    extra = []
    for s in range(0, u.shape[-1], chunk_size):
        decay = torch.exp(dts[..., s : s + chunk_size, None] * A[:, None])  # (b, d, lc, n)
        extra.append(
            torch.einsum("bdln,bdn,bnl->bdl", decay, h0, C[..., s : s + chunk_size].float())
        )
    y = y.float() + torch.cat(extra, dim=-1)
    if z is not None:
        y = y * F.silu(z.float())
    last = last.float() + torch.exp(dts[..., -1:] * A) * h0
    return y.to(u.dtype), last
