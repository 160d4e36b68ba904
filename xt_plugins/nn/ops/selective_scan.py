"""The selective scan of Mamba-1: its operands, the sequential reference and the chunked scan.

* :func:`selective_scan_ref`: a plain loop over time (the semantics of ``mamba_ssm``'s
  ``selective_scan_fn``, plus an initial state).
* :func:`selective_scan`: the same result from a blocked scan that loops over time only
  ``O(L / sqrt(chunk_size))`` times in Python, with memory ``O(b * d * n * chunk_size)``. It
  dispatches to the streaming no-grad scan (:mod:`.scan_chunked`) or the differentiable one
  (:mod:`.scan_autograd`); under ``torch.compile`` / ``torch.export`` always to the latter.
* :class:`ScanInputs`: the scan's operands as one named structure, in ``mamba_ssm``'s argument
  order (so ``selective_scan(*inputs)`` and ``selective_scan_fn(*inputs)`` both work).

The CUDA kernels of ``mamba_ssm`` are adapted in :mod:`.scan_kernels`.

.. versionadded:: 0.1
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .scan_autograd import scan_autograd
from .scan_chunked import scan_streaming

__all__ = ["ScanInputs", "selective_scan_ref", "selective_scan", "auto_chunk_size"]

_LOG2_E = 1.0 / math.log(2.0)


class ScanInputs(NamedTuple):
    """Operands of one selective scan, in ``mamba_ssm.selective_scan_fn``'s order.

    Attributes:
        u: (b, d, l) input.
        delta: (b, d, l) step sizes (before ``delta_bias`` and softplus).
        A: (d, n) state matrix (diagonal per channel; negative for a stable scan).
        B: (b, n, l) input projection.
        C: (b, n, l) output projection.
        D: (d,) skip weight, or None.
        z: (b, d, l) gate, or None.
        delta_bias: (d,) added to ``delta``, or None.
        delta_softplus: apply softplus to ``delta`` (after the bias).
    """

    u: Tensor
    delta: Tensor
    A: Tensor
    B: Tensor
    C: Tensor
    D: Tensor | None = None
    z: Tensor | None = None
    delta_bias: Tensor | None = None
    delta_softplus: bool = False

    def exp2_rates(self) -> Tensor:
        """(n, d) ``A * log2(e)``, transposed: ``exp2`` is much faster than ``exp`` on CPU."""
        return (self.A.float() * _LOG2_E).t().contiguous()

    def tensors(self) -> tuple[Tensor | None, ...]:
        """Every tensor operand (None where absent)."""
        return (self.u, self.delta, self.A, self.B, self.C, self.D, self.z, self.delta_bias)


def _prepare_delta(delta: Tensor, delta_bias: Tensor | None, delta_softplus: bool) -> Tensor:
    """Step sizes as the kernel sees them: float, plus bias, through softplus if asked."""
    delta = delta.float()
    if delta_bias is not None:
        delta = delta + delta_bias[..., None].float()
    if delta_softplus:
        delta = F.softplus(delta)
    return delta


def _finish(y: Tensor, u: Tensor, D: Tensor | None, z: Tensor | None, dtype: torch.dtype) -> Tensor:
    """Skip connection and gate: ``(y + D u) * silu(z)``, cast to the input dtype."""
    if D is not None:
        y = y + u * D.float()[:, None]
    if z is not None:
        y = y * F.silu(z.float())
    return y.to(dtype)


def _check_shapes(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor) -> None:
    if u.ndim != 3 or delta.shape != u.shape:
        raise ValueError(
            f"u and delta must both be (b, d, l), got {tuple(u.shape)} and {tuple(delta.shape)}"
        )
    b, d, length = u.shape
    if A.ndim != 2 or A.shape[0] != d:
        raise ValueError(f"A must be (d={d}, n), got {tuple(A.shape)}")
    n = A.shape[1]
    for name, t in (("B", B), ("C", C)):
        if t.shape != (b, n, length):
            raise ValueError(
                f"{name} must be input-dependent (b={b}, n={n}, l={length}), got {tuple(t.shape)}"
            )


def selective_scan_ref(
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
    return_last_state: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Selective scan as a sequential loop over time (the reference semantics).

    For every channel ``d`` and state ``n``:
    ``h_t = exp(delta_t A) h_{t-1} + delta_t B_t u_t``, ``y_t = C_t . h_t + D u_t``, and
    ``out_t = y_t * silu(z_t)``. Same arguments and result as ``mamba_ssm``'s
    ``selective_scan_fn`` (input-dependent ``B`` and ``C``), plus ``initial_state``.

    Args:
        u: (b, d, l) input.
        delta: (b, d, l) step sizes (before ``delta_bias`` and softplus).
        A: (d, n) state matrix (diagonal per channel; negative for a stable scan).
        B: (b, n, l) input projection.
        C: (b, n, l) output projection.
        D: (d,) skip weight.
        z: (b, d, l) gate.
        delta_bias: (d,) added to ``delta``.
        delta_softplus: apply softplus to ``delta`` (after the bias).
        initial_state: (b, d, n) state before the first step (zeros if None).
        return_last_state: also return the state after the last step.

    Returns:
        ``out`` (b, d, l) in ``u``'s dtype, or ``(out, last_state)`` with last_state (b, d, n)
        float32.
    """
    _check_shapes(u, delta, A, B, C)
    dtype_in = u.dtype
    u = u.float()
    delta = _prepare_delta(delta, delta_bias, delta_softplus)
    A, B, C = A.float(), B.float(), C.float()
    b, d, length = u.shape
    n = A.shape[1]
    x = u.new_zeros(b, d, n) if initial_state is None else initial_state.float()
    delta_a = torch.exp(torch.einsum("bdl,dn->bdln", delta, A))  # (b, d, l, n)
    delta_b_u = torch.einsum("bdl,bnl,bdl->bdln", delta, B, u)  # (b, d, l, n)
    ys = []
    for i in range(length):
        x = delta_a[:, :, i] * x + delta_b_u[:, :, i]  # (b, d, n)
        ys.append(torch.einsum("bdn,bn->bd", x, C[:, :, i]))
    y = torch.stack(ys, dim=2) if ys else u.new_zeros(b, d, 0)  # (b, d, l)
    out = _finish(y, u, D, z, dtype_in)
    return (out, x) if return_last_state else out


def auto_chunk_size(b: int, d: int, n: int, budget: int = 2**20) -> int:
    """Scan chunk length whose (b, n, d) work buffers hold about ``budget`` floats each.

    The power of two nearest ``budget / (b * d * n)``, clamped to 16..256 steps: 128 steps for
    d=512, n=16 and 32 for d=1536 (xT's ConvNeXt-T / Swin-T context). How this was tuned, with
    the timings, is in ``benchmarks/README.md`` (``benchmarks/scan.py --chunk-size``).
    """
    per_step = max(1, b * d * n)
    steps = 2 ** round(math.log2(max(budget / per_step, 1.0)))
    return int(min(256, max(16, steps)))


def split_chunk(chunk_size: int) -> tuple[int, int]:
    """Split a chunk of ``chunk_size`` steps into ``k`` sub-chunks of ``t ~ sqrt`` steps.

    Returns:
        ``(t, k)``.
    """
    chunk_size = max(1, int(chunk_size))
    t = 2 ** round(math.log2(chunk_size) / 2)
    return t, max(1, chunk_size // t)


def _compiling() -> bool:
    """True while ``torch.compile`` or ``torch.export`` traces the code."""
    return torch.compiler.is_compiling() or torch.compiler.is_exporting()


def selective_scan(
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
    return_last_state: bool = False,
    chunk_size: int | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    """Selective scan in plain PyTorch, chunk by chunk (same result as :func:`selective_scan_ref`).

    The sequence is processed in chunks of ``chunk_size`` steps with the (b, d, n) state carried
    sequentially between chunks. Inside a chunk the steps are split into ``k`` sub-chunks of
    ``t ~ sqrt(chunk_size)`` steps. Without autograd (:func:`.scan_chunked.scan_streaming`) the
    sub-chunks are first scanned together from a zero state for their end states only, the
    state entering every sub-chunk is carried across the ``k`` sub-chunk ends, and the
    sub-chunks are scanned again from their true entering states; under autograd
    (:func:`.scan_autograd.scan_autograd`) the first scan keeps its states and the entering
    state's decay is added in closed form. Python loops ``~2 L / sqrt(chunk_size)`` times
    instead of ``L``; every exponent is ``delta * A <= 0`` (no ``exp`` of a large positive
    number).

    Memory: without autograd only the output is as long as the sequence; each chunk's work
    buffers are ``2 * b * d * n * chunk_size`` floats; the default sizes each to about 4 MiB
    (:func:`auto_chunk_size`), to stay in a CPU core's L2 cache. Under autograd each chunk is
    checkpointed, so training keeps ``O(b * d * l)`` activations plus one chunk. The work runs
    with channels innermost: arguments that are (b, d, l) views of (b, l, d) memory (what
    :class:`~xt_plugins.nn.layers.mamba.Mamba` passes) need no transposes, contiguous
    (b, d, l) ones cost three 2-D transposes per ~1k steps, and the output has the memory
    layout of ``u``. On CPU without autograd each chunk runs with all intra-op threads or one,
    whichever measures cheaper (:mod:`.threads`: many small parallel ops collapse when other
    processes share the cores). While ``torch.compile`` or ``torch.export`` traces, the
    differentiable path runs (its ops are out of place) without checkpointing, in and out of
    autograd.

    Args:
        u: (b, d, l) input.
        delta: (b, d, l) step sizes (before ``delta_bias`` and softplus).
        A: (d, n) state matrix (negative entries, as ``-exp(A_log)``).
        B: (b, n, l) input projection.
        C: (b, n, l) output projection.
        D: (d,) skip weight.
        z: (b, d, l) gate.
        delta_bias: (d,) added to ``delta``.
        delta_softplus: apply softplus to ``delta`` (after the bias).
        initial_state: (b, d, n) state before the first step (zeros if None).
        return_last_state: also return the state after the last step.
        chunk_size: steps per chunk (work memory grows with it); None: :func:`auto_chunk_size`.

    Returns:
        ``out`` (b, d, l) in ``u``'s dtype, or ``(out, last_state)`` with last_state (b, d, n)
        float32.
    """
    _check_shapes(u, delta, A, B, C)
    x = ScanInputs(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    b, d, _ = u.shape
    n = A.shape[1]
    h = (  # (b, n, d)
        u.new_zeros(b, n, d, dtype=torch.float32)
        if initial_state is None
        else initial_state.float().transpose(1, 2).contiguous()
    )
    t, k = split_chunk(auto_chunk_size(b, d, n) if chunk_size is None else chunk_size)
    tensors = (*x.tensors(), initial_state)
    if _compiling():
        out, h = scan_autograd(x, h, t, k, checkpoint_chunks=False)
    elif torch.is_grad_enabled() and any(v is not None and v.requires_grad for v in tensors):
        out, h = scan_autograd(x, h, t, k)
    else:
        out, h = scan_streaming(x, h, t, k)
    out = out.to(u.dtype)
    if not return_last_state:
        return out
    return out, h.transpose(1, 2)  # (b, d, n)
