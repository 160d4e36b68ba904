"""Mamba context encoder: a pure-PyTorch, state-carrying Mamba-1 with an optional CUDA fast path.

Three layers of the same idea live here:

* :func:`selective_scan_ref`: the selective scan as a plain loop over time (the semantics of
  ``mamba_ssm.ops.selective_scan_interface.selective_scan_fn``, plus an initial state).
* :func:`selective_scan`: the same result from a blocked scan that loops over time only
  ``O(L / sqrt(chunk_size))`` times in Python, with memory ``O(b * d * n * chunk_size)``.
* :class:`Mamba`: parameter-compatible with ``mamba_ssm.Mamba`` (Mamba-1) and able to take and
  return its ``(conv_state, ssm_state)``, so a sequence run in pieces equals one pass.

:class:`MambaContext` stacks bidirectional (alternating direction) Mamba layers over the region
token sequence and can run layer by layer in chunks (:meth:`MambaContext.forward_chunked`).

``mamba_ssm`` cannot be imported without its CUDA extension; when it imports and the input is
on CUDA, its fused ``selective_scan_fn`` (and ``causal_conv1d_fn`` when available) is used,
otherwise everything runs in plain PyTorch. :data:`HAS_MAMBA_SSM` says which.

.. versionadded:: 0.1
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .base import ContextEncoder, identity_init, register_context, sincos_2d

try:  # the CUDA kernels; importing fails without a CUDA build (OSError, ImportError, ...)
    from mamba_ssm.ops.selective_scan_interface import (
        selective_scan_fn as _cuda_selective_scan_fn,
    )

    HAS_MAMBA_SSM = True
except Exception:  # pragma: no cover - depends on the machine
    _cuda_selective_scan_fn = None
    HAS_MAMBA_SSM = False

try:
    from causal_conv1d import causal_conv1d_fn as _causal_conv1d_fn

    HAS_CAUSAL_CONV1D = True
except Exception:  # pragma: no cover - depends on the machine
    _causal_conv1d_fn = None
    HAS_CAUSAL_CONV1D = False

__all__ = [
    "HAS_MAMBA_SSM",
    "HAS_CAUSAL_CONV1D",
    "selective_scan_ref",
    "selective_scan",
    "auto_chunk_size",
    "Mamba",
    "MambaContext",
]

_LOG2_E = 1.0 / math.log(2.0)
_LN2 = math.log(2.0)

#: ``(conv_state (B, d_inner, d_conv - 1), ssm_state (B, d_inner, d_state))``
MambaState = tuple[Tensor, Tensor]


# ----------------------------------------------------------------------------- selective scan
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

    The power of two nearest ``budget / (b * d * n)``, clamped to 16..256 steps. Measured on
    2 CPU cores (``benchmarks/scan.py --chunk-size``): for d=512 chunks of 64-128 steps are
    fastest, for d=1536 (xT's ConvNeXt-T / Swin-T context) 32-64; 256 is 30-40 % slower there.
    """
    per_step = max(1, b * d * n)
    steps = 2 ** round(math.log2(max(budget / per_step, 1.0)))
    return int(min(256, max(16, steps)))


def _split_chunk(chunk_size: int) -> tuple[int, int]:
    """Split a chunk of ``chunk_size`` steps into ``k`` sub-chunks of ``t ~ sqrt`` steps."""
    chunk_size = max(1, int(chunk_size))
    t = 2 ** round(math.log2(chunk_size) / 2)
    return t, max(1, chunk_size // t)


def _time_major(x: Tensor) -> Tensor:
    """(b, c, l) -> (b, l, c) contiguous; free for a transposed view of a (b, l, c) tensor."""
    xt = x.transpose(1, 2)
    if xt.is_contiguous():
        return xt
    out = x.new_empty(xt.shape)
    for i in range(x.shape[0]):
        out[i].copy_(xt[i])  # 2-D copies take PyTorch's blocked transpose path
    return out


def _block_view(x: Tensor, start: int, stop: int, t: int) -> Tensor:
    """Steps ``start:stop`` of a time-major (b, l, c) tensor as (t, k, b, c).

    Time is split into ``k`` sub-chunks of ``t`` steps (step ``j * t + i`` is ``[i, j]``); the
    last sub-chunk is zero-padded to ``t`` steps. With ``delta = 0`` and ``delta * u = 0`` a
    padded step leaves the state as it is.
    """
    x = x[:, start:stop]  # (b, l_blk, c)
    pad = (-(stop - start)) % t
    if pad:
        x = F.pad(x, (0, 0, 0, pad))
    b, lb, c = x.shape
    return x.view(b, lb // t, t, c).permute(2, 1, 0, 3)


class _Workspace:
    """Work buffers of :func:`_scan_chunk` and the per-step views of them, reused across chunks.

    Args:
        shape: ``(k, t, b, n, d)``.
        like: a tensor giving dtype and device.
    """

    def __init__(self, shape: tuple[int, ...], like: Tensor) -> None:
        self.shape = shape
        k, _, b, n, d = shape
        self.decay = like.new_empty(shape)  # exp(delta A) of every step
        self.hs = like.new_empty(shape)  # delta u B, then (in place) the states
        self.acc = like.new_empty(k - 1, b, n, d)  # sub-chunk end states from a zero start
        self.h_in = like.new_empty(k, b, n, d)  # the true state entering each sub-chunk
        self.end_decay = like.new_empty(k - 1, b, n, d)  # decay over each whole sub-chunk
        self.delta_sum = like.new_empty(k - 1, b, d)
        # views made once: building them per step costs as much as a small op
        self.decay_t, self.hs_t = self.decay.unbind(1), self.hs.unbind(1)  # t x (k, b, n, d)
        self.head_decay_t = self.decay[: k - 1].unbind(1)  # t x (k - 1, b, n, d)
        self.head_hs_t = self.hs[: k - 1].unbind(1)
        self.acc_k, self.h_in_k = self.acc.unbind(0), self.h_in.unbind(0)
        self.last = self.hs[-1, -1]  # (b, n, d) state after the chunk


def _scan_chunk(
    delta: Tensor,
    du: Tensor,
    Bl: Tensor,
    Cl: Tensor,
    h: Tensor,
    At2: Tensor,
    ws: list,
    y: Tensor,
    accumulate: bool = False,
) -> Tensor:
    """One chunk of the blocked scan in reused buffers (no autograd).

    The chunk is ``k`` consecutive sub-chunks of ``t`` steps. Three passes, each a handful of
    big tensor ops over all sub-chunks at once:

    1. every sub-chunk but the last is scanned from a zero state into one accumulator per
       sub-chunk (its end state; nothing per step is stored);
    2. the true state entering every sub-chunk is carried across the ``k`` sub-chunk ends
       (the decay over a whole sub-chunk in closed form: ``exp(A * sum(delta))``);
    3. every sub-chunk is scanned again from its true entering state, writing the states in
       place of the increments ``delta u B``, and ``y = C . h`` is one batched matmul.

    Each element of the (k, t, b, n, d) work buffers is read or written about 10 times; every
    exponent is ``delta * A <= 0`` (nothing grows).

    Args:
        delta: (k, t, b, d) step sizes (step ``j * t + i`` of the chunk at ``[j, i]``).
        du: (k, t, b, d) ``delta * u``.
        Bl: (k, t, b, n).
        Cl: (k, t, b, n).
        h: (b, n, d) state entering the chunk.
        At2: (n, d) ``A * log2(e)``, transposed (``exp2`` is much faster than ``exp`` on CPU).
        ws: holds the cached :class:`_Workspace` (replaced when the chunk shape changes).
        y: (k, t, b, d) contiguous output, ``C . h`` of every step.
        accumulate: add ``C . h`` to what ``y`` holds (the skip term) instead of overwriting it.

    Returns:
        The state (b, n, d) after the chunk.
    """
    k, t, b, d = delta.shape
    n = At2.shape[0]
    if not ws or ws[0].shape != (k, t, b, n, d):
        ws[:] = [_Workspace((k, t, b, n, d), delta)]
    w = ws[0]
    decay, hs = w.decay, w.hs
    torch.mul(delta.unsqueeze(-2), At2, out=decay).exp2_()  # exp(delta A) <= 1
    torch.mul(du.unsqueeze(-2), Bl.unsqueeze(-1), out=hs)  # delta u B
    if k > 1:
        acc, dec_t, inc_t = w.acc, w.head_decay_t, w.head_hs_t
        if t == 1:
            acc.copy_(inc_t[0])
        else:  # 1. end states from a zero start, all sub-chunks at once
            torch.addcmul(inc_t[1], dec_t[1], inc_t[0], out=acc)
        for i in range(2, t):
            torch.addcmul(inc_t[i], dec_t[i], acc, out=acc)
        # (out= buffers: a fresh result of this broadcast gets a slow memory layout)
        delta_sum = torch.sum(delta[: k - 1], 1, out=w.delta_sum)
        end_decay = torch.mul(delta_sum.unsqueeze(-2), At2, out=w.end_decay).exp2_()
        acc_k, h_in_k = w.acc_k, w.h_in_k
        h_in_k[0].copy_(h)
        for j in range(1, k):  # 2. carry the true state across the sub-chunk starts
            torch.addcmul(acc_k[j - 1], end_decay[j - 1], h_in_k[j - 1], out=h_in_k[j])
        h_in = w.h_in
    else:
        h_in = h
    hs_t, decay_t = w.hs_t, w.decay_t
    hs_t[0].addcmul_(decay_t[0], h_in)  # 3. the states, from the true entering states
    for i in range(1, t):
        hs_t[i].addcmul_(decay_t[i], hs_t[i - 1])
    if accumulate:
        y.view(-1, 1, d).baddbmm_(Cl.reshape(-1, 1, n), hs.view(-1, n, d))
    else:
        torch.bmm(Cl.reshape(-1, 1, n), hs.view(-1, n, d), out=y.view(-1, 1, d))
    return w.last.clone()


def _scan_block_autograd(
    delta: Tensor, du: Tensor, Bl: Tensor, Cl: Tensor, h: Tensor, At2: Tensor
) -> tuple[Tensor, Tensor]:
    """One chunk of the blocked scan with out-of-place ops, so autograd can differentiate it."""
    t, k = delta.shape[:2]
    decay = torch.exp2(delta.unsqueeze(-2) * At2)  # (t, k, b, n, d)
    inc = du.unsqueeze(-2) * Bl.unsqueeze(-1)  # (t, k, b, n, d)
    hs, cum = [inc[0]], [decay[0]]
    for i in range(1, t):
        hs.append(torch.addcmul(inc[i], decay[i], hs[-1]))
        cum.append(cum[-1] * decay[i])
    h_loc, cum_decay = torch.stack(hs), torch.stack(cum)
    h_ins = [h]
    for j in range(k):
        h_ins.append(torch.addcmul(h_loc[-1, j], cum_decay[-1, j], h_ins[-1]))
    h_full = torch.addcmul(h_loc, cum_decay, torch.stack(h_ins[:-1]))
    y = torch.matmul(Cl.contiguous().unsqueeze(-2), h_full).squeeze(-2)  # (t, k, b, d)
    return y, h_ins[-1]


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
    ``t ~ sqrt(chunk_size)`` steps. Without autograd (:func:`_scan_chunk`) the sub-chunks are
    first scanned together from a zero state for their end states only, the state entering
    every sub-chunk is carried across the ``k`` sub-chunk ends, and the sub-chunks are scanned
    again from their true entering states; under autograd the first scan keeps its states and
    the entering state's decay is added in closed form. Python loops ``~2 L / sqrt(chunk_size)``
    times instead of ``L``; every exponent is ``delta * A <= 0`` (no ``exp`` of a large positive
    number).

    Memory: without autograd only the output is as long as the sequence; each chunk's work
    buffers are ``2 * b * d * n * chunk_size`` floats; the default sizes each to about 4 MiB
    (:func:`auto_chunk_size`: 128 steps for b=1, d=512, n=16; 32 for d=1536), which measured
    fastest on CPUs with 1-2 MiB of L2 per core. Under autograd each chunk is checkpointed, so
    training keeps ``O(b * d * l)`` activations plus one chunk. The work runs with channels
    innermost: arguments that are (b, d, l) views of (b, l, d) memory (what :class:`Mamba`
    passes) need no transposes, contiguous (b, d, l) ones cost three 2-D transposes per ~1k
    steps, and the output has the memory layout of ``u``.

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
    b, d, _ = u.shape
    n = A.shape[1]
    At2 = (A.float() * _LOG2_E).t().contiguous()  # (n, d), for exp2
    h = (  # (b, n, d)
        u.new_zeros(b, n, d, dtype=torch.float32)
        if initial_state is None
        else initial_state.float().transpose(1, 2).contiguous()
    )
    t, k = _split_chunk(auto_chunk_size(b, d, n) if chunk_size is None else chunk_size)
    args = (u, delta, At2, B, C, D, z, delta_bias, delta_softplus, h, t, k)
    tensors = (u, delta, A, B, C, D, z, delta_bias, initial_state)
    if torch.is_grad_enabled() and any(x is not None and x.requires_grad for x in tensors):
        out, h = _scan_autograd(*args)
    else:
        out, h = _scan_streaming(*args)
    out = out.to(u.dtype)
    if not return_last_state:
        return out
    return out, h.transpose(1, 2)  # (b, d, n)


def _softplus_(x: Tensor, tmp: Tensor) -> Tensor:
    """``F.softplus`` in place, without ``log1p``; ``tmp`` is scratch of ``x``'s shape.

    ``softplus(x) = max(x, 0) + log1p(e)`` with ``e = exp(-|x|)``, and
    ``log1p(e) = 2 atanh(e / (2 + e)) = 2 atanh(sigmoid(-|x| - log 2))``: a few ulps from
    ``F.softplus`` everywhere, with only vectorised kernels. (torch's CPU ``log1p``, which
    ``F.softplus`` uses, ran 5-10x slower than ``exp`` + ``log`` on the 2-core AMD EPYC this was
    measured on, depending on what earlier ops had run in the thread.)
    """
    torch.sub(x.new_tensor(-_LN2), torch.abs(x, out=tmp), out=tmp).sigmoid_().atanh_()
    return x.clamp_(min=0.0).add_(tmp, alpha=2.0)


def _transpose_into(src: Tensor, dst: Tensor) -> None:
    """``dst.copy_(src.t())`` for 2-D tensors, through PyTorch's blocked 2-D transpose.

    That path needs contiguous memory on both sides; into a strided ``dst`` (batch > 1) a
    contiguous transposed copy first is still ~2x faster than the strided copy.
    """
    strided_dst = src.numel() >= 4096 and src.is_contiguous() and not dst.is_contiguous()
    dst.copy_(src.t().contiguous() if strided_dst else src.t())


def _head(buf: Tensor, *shape: int) -> Tensor:
    """A contiguous ``shape`` view on the start of a flat-able buffer."""
    return buf.view(-1)[: math.prod(shape)].view(shape)


def _scan_streaming(
    u: Tensor,
    delta: Tensor,
    At2: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None,
    z: Tensor | None,
    delta_bias: Tensor | None,
    delta_softplus: bool,
    h: Tensor,
    t: int,
    k: int,
    stage_len: int = 1024,
) -> tuple[Tensor, Tensor]:
    """No-autograd scan that streams: only the output is as long as the sequence.

    The sequence is staged ``~stage_len`` steps at a time: step sizes and ``delta * u`` are
    prepared in the caller's layout and laid out step-major, (l, b, d), in small reused buffers
    (a copy for time-major inputs, one 2-D transpose each for channel-major ones), scanned chunk
    by chunk (:func:`_scan_chunk`, whose blocks are plain views of those buffers), and the
    outputs are skip-connected, gated and written in the layout of ``u``.

    Returns:
        ``(out (b, d, l) float32 in u's memory layout, state (b, n, d))``.
    """
    b, d, length = u.shape
    n = At2.shape[0]
    span = t * k
    stage = span * max(1, stage_len // span)
    time_major = u.stride(1) == 1 and length > 1
    out = (
        u.new_empty(b, length, d, dtype=torch.float32).transpose(1, 2)
        if time_major
        else u.new_empty(b, d, length, dtype=torch.float32)
    )  # (b, d, l)
    padded_len = -(-length // t) * t
    BC = u.new_zeros(padded_len, b, 2, n, dtype=torch.float32)  # (l, b, [B, C], n), small
    BC[:length, :, 0] = B.permute(2, 0, 1)
    BC[:length, :, 1] = C.permute(2, 0, 1)
    bias = None if delta_bias is None else delta_bias.float()[:, None]  # (d, 1)
    skip = None if D is None else D.float()[:, None]
    ws: list[_Workspace] = []
    # reused buffers (fresh large allocations cost page faults on every call)
    rows = min(stage, padded_len)
    delta_st, du_st, y_st = (u.new_empty(rows, b, d, dtype=torch.float32) for _ in range(3))
    scratch = None if time_major else u.new_empty(2, b, d, rows, dtype=torch.float32)
    # time-major: the skip term D u goes into y while u is hot, the scan adds C . h to it
    accumulate = time_major and skip is not None
    for s0 in range(0, length, stage):
        s1 = min(length, s0 + stage)
        n_steps, n_rows = s1 - s0, -(-(s1 - s0) // t) * t
        u_st = u[:, :, s0:s1].float()  # (b, d, l_stage)
        if time_major:  # prepare straight into the step-major buffers, (b, d, l) views of them
            dl, du = (x[:n_steps].permute(1, 2, 0) for x in (delta_st, du_st))
            tmp = y_st[:n_steps].permute(1, 2, 0)
        else:  # prepare channel-major in scratch, then transpose into the buffers
            dl, du = (_head(x, b, d, n_steps) for x in scratch)
            tmp = _head(y_st, b, d, n_steps)
        delta_in = delta[:, :, s0:s1]
        if bias is not None:
            torch.add(delta_in, bias, out=dl)
        else:
            dl.copy_(delta_in)
        if delta_softplus:
            _softplus_(dl, tmp)
        torch.mul(dl, u_st, out=du)
        if not time_major:
            for i in range(b):
                _transpose_into(dl[i], delta_st[:n_steps, i])
                _transpose_into(du[i], du_st[:n_steps, i])
        if accumulate:
            torch.mul(u_st, skip, out=y_st[:n_steps].permute(1, 2, 0))
        if n_steps < n_rows:  # padded steps: delta = 0, delta * u = 0 leave the state as is
            delta_st[n_steps:n_rows] = 0.0
            du_st[n_steps:n_rows] = 0.0
            y_st[n_steps:n_rows] = 0.0
        for c0 in range(0, n_rows, span):
            c1 = min(n_rows, c0 + span)
            blocks = (x[c0:c1].view(-1, t, *x.shape[1:]) for x in (delta_st, du_st, y_st))
            dv, duv, yv = blocks  # (k, t, b, d)
            bc = BC[s0 + c0 : s0 + c1].view(-1, t, b, 2, n)
            h = _scan_chunk(dv, duv, bc[..., 0, :], bc[..., 1, :], h, At2, ws, yv, accumulate)
        out_st = out[:, :, s0:s1]
        if time_major:  # everything (b, d, l) views of (l, b, d) / (b, l, d) memory
            y, gate = y_st[:n_steps].permute(1, 2, 0), du_st[:n_steps].permute(1, 2, 0)
        else:
            y, gate = (_head(x, b, d, n_steps) for x in scratch)
            for i in range(b):
                _transpose_into(y_st[:n_steps, i], y[i])
            if skip is not None:
                y.addcmul_(u_st, skip)
        if z is not None:
            torch.ops.aten.silu.out(z[:, :, s0:s1].float(), out=gate)
            torch.mul(y, gate, out=out_st)
        else:
            out_st.copy_(y)
    return out, h


def _scan_autograd(
    u: Tensor,
    delta: Tensor,
    At2: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None,
    z: Tensor | None,
    delta_bias: Tensor | None,
    delta_softplus: bool,
    h: Tensor,
    t: int,
    k: int,
) -> tuple[Tensor, Tensor]:
    """Differentiable scan: out-of-place ops, each chunk checkpointed when there are several.

    Returns:
        ``(out (b, d, l) float32, state (b, n, d))``.
    """
    b, d, length = u.shape
    span = t * k
    # time-major (b, l, c): free when the caller's tensors are transposed (b, l, c) views
    u_tm = _time_major(u).float()
    delta_tm = _time_major(delta).float()
    if delta_bias is not None:
        delta_tm = delta_tm + delta_bias.float()
    if delta_softplus:
        delta_tm = F.softplus(delta_tm)
    du_tm = delta_tm * u_tm  # (b, l, d)
    B_tm, C_tm = _time_major(B).float(), _time_major(C).float()  # (b, l, n)
    ys = []
    for start in range(0, length, span):
        stop = min(length, start + span)
        blk = [_block_view(x, start, stop, t) for x in (delta_tm, du_tm, B_tm, C_tm)]
        if length > span:  # several chunks: keep only each chunk's inputs for backward
            y, h = checkpoint(_scan_block_autograd, *blk, h, At2, use_reentrant=False)
        else:
            y, h = _scan_block_autograd(*blk, h, At2)
        ys.append(y.permute(2, 1, 0, 3).reshape(b, -1, d)[:, : stop - start])
    y_tm = torch.cat(ys, dim=1) if ys else u_tm.new_zeros(b, 0, d)  # (b, l, d)
    if D is not None:
        y_tm = y_tm + u_tm * D.float()
    if z is not None:
        y_tm = y_tm * F.silu(_time_major(z).float())
    return y_tm.transpose(1, 2), h


def _kernel_scan_with_state(
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

    The scan is linear in its state, so the initial state's share is added in closed form:
    ``h_t += exp(A * cumsum(delta)_t) h_0`` (exponents <= 0), i.e.
    ``y_t += sum_n C_t exp(A S_t) h_0``, computed ``chunk_size`` steps at a time.

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


# ----------------------------------------------------------------------------- Mamba layer
class Mamba(nn.Module):
    """Mamba-1 mixer, parameter-compatible with ``mamba_ssm.Mamba``, with a carried state.

    Same constructor, parameter names, shapes and initialisation as upstream (``in_proj``,
    ``conv1d``, ``x_proj``, ``dt_proj``, ``A_log``, ``D``, ``out_proj``), so upstream weights
    load with ``load_state_dict``. Unlike upstream's training path, :meth:`forward` takes and
    returns the ``(conv_state, ssm_state)`` so a sequence can be run in pieces.

    Args:
        d_model: token dimension.
        d_state: SSM state size ``n``.
        d_conv: depthwise causal convolution width.
        expand: ``d_inner = expand * d_model``.
        dt_rank: rank of the step-size projection (``"auto"``: ``ceil(d_model / 16)``).
        dt_min: smallest initial step size.
        dt_max: largest initial step size.
        dt_init: ``"random"`` or ``"constant"`` initialisation of ``dt_proj.weight``.
        dt_scale: scale of the ``dt_proj.weight`` initialisation.
        dt_init_floor: floor of the initial step sizes.
        conv_bias: bias in ``conv1d``.
        bias: bias in ``in_proj`` and ``out_proj``.
        use_fast_path: use ``mamba_ssm``/``causal_conv1d`` kernels for CUDA inputs when present.
        layer_idx: kept for upstream compatibility.
        chunk_size: chunk length of the pure-PyTorch scan (:func:`selective_scan`; None: sized
            to the work buffers, :func:`auto_chunk_size`).
        device: parameter device (``"meta"`` works).
        dtype: parameter dtype (``A_log`` and ``D`` stay float32, as upstream).
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_rank: int | str = "auto",
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init: str = "random",
        dt_scale: float = 1.0,
        dt_init_floor: float = 1e-4,
        conv_bias: bool = True,
        bias: bool = False,
        use_fast_path: bool = True,
        layer_idx: int | None = None,
        chunk_size: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        factory = {"device": device, "dtype": dtype}
        super().__init__()
        self.d_model = d_model
        self.d_state = d_state
        self.d_conv = d_conv
        self.expand = expand
        self.d_inner = int(expand * d_model)
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        self.use_fast_path = use_fast_path
        self.layer_idx = layer_idx
        self.chunk_size = chunk_size

        self.in_proj = nn.Linear(d_model, self.d_inner * 2, bias=bias, **factory)
        self.conv1d = nn.Conv1d(
            self.d_inner,
            self.d_inner,
            kernel_size=d_conv,
            groups=self.d_inner,
            padding=d_conv - 1,
            bias=conv_bias,
            **factory,
        )
        self.activation = "silu"
        self.act = nn.SiLU()
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + d_state * 2, bias=False, **factory)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True, **factory)

        # dt projection: preserve variance at initialisation
        dt_init_std = self.dt_rank**-0.5 * dt_scale
        if dt_init == "constant":
            nn.init.constant_(self.dt_proj.weight, dt_init_std)
        elif dt_init == "random":
            nn.init.uniform_(self.dt_proj.weight, -dt_init_std, dt_init_std)
        else:
            raise NotImplementedError(f"dt_init must be 'random' or 'constant', got {dt_init!r}")
        # dt bias: softplus(bias) log-uniform in [dt_min, dt_max]
        dt = torch.exp(
            torch.rand(self.d_inner, **factory) * (math.log(dt_max) - math.log(dt_min))
            + math.log(dt_min)
        ).clamp(min=dt_init_floor)
        inv_dt = dt + torch.log(-torch.expm1(-dt))  # inverse of softplus
        with torch.no_grad():
            self.dt_proj.bias.copy_(inv_dt)
        self.dt_proj.bias._no_reinit = True

        # S4D real initialisation, kept in float32
        A = torch.arange(1, d_state + 1, dtype=torch.float32, device=device)
        self.A_log = nn.Parameter(torch.log(A).expand(self.d_inner, -1).contiguous())
        self.A_log._no_weight_decay = True
        self.D = nn.Parameter(torch.ones(self.d_inner, device=device))
        self.D._no_weight_decay = True

        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias, **factory)

    def _use_kernels(self, x: Tensor) -> bool:
        return self.use_fast_path and HAS_MAMBA_SSM and x.is_cuda

    def _conv(self, x: Tensor, conv_state: Tensor | None) -> tuple[Tensor, Tensor]:
        """Causal depthwise conv + SiLU, time-major, continuing from ``conv_state``.

        Args:
            x: (B, L, d_inner) pre-conv activations.
            conv_state: (B, d_inner, d_conv - 1) the previous inputs (None: zeros).

        Returns:
            (B, L, d_inner) activations and the new conv state.
        """
        b, length, d = x.shape
        k = self.d_conv - 1
        fresh = conv_state is None
        if conv_state is None:
            conv_state = x.new_zeros(b, d, k)
        x_cat = torch.cat([conv_state.transpose(1, 2).to(x.dtype), x], dim=1)  # (B, k + L, d)
        new_state = x_cat[:, x_cat.shape[1] - k :].transpose(1, 2).contiguous()  # (B, d, k)
        weight = self.conv1d.weight[:, 0]  # (d_inner, d_conv)
        if fresh and HAS_CAUSAL_CONV1D and self._use_kernels(x):  # pragma: no cover - CUDA only
            out = _causal_conv1d_fn(
                x=x.transpose(1, 2), weight=weight, bias=self.conv1d.bias, activation="silu"
            )
            return out.transpose(1, 2), new_state
        # out_t = bias + sum_i w_i x_{t - k + i}: d_conv shifted multiply-adds, no transposes
        out = x_cat[:, :length] * weight[:, 0]
        for i in range(1, self.d_conv):
            out = out.addcmul(x_cat[:, i : i + length], weight[:, i])
        if self.conv1d.bias is not None:
            out = out + self.conv1d.bias
        return self.act(out), new_state

    def forward(
        self, hidden_states: Tensor, state: MambaState | None = None
    ) -> tuple[Tensor, MambaState]:
        """Mix a sequence, continuing from ``state``.

        Args:
            hidden_states: (B, L, d_model).
            state: ``(conv_state (B, d_inner, d_conv - 1), ssm_state (B, d_inner, d_state))``
                from the previous piece of the sequence (None to start fresh).

        Returns:
            ``(out (B, L, d_model), new_state)``.
        """
        conv_state, ssm_state = state if state is not None else (None, None)
        x, z = self.in_proj(hidden_states).chunk(2, dim=-1)  # (B, L, d_inner) each
        x, new_conv_state = self._conv(x, conv_state)
        x_dbl = self.x_proj(x)  # (B, L, dt_rank + 2 n)
        dt, B, C = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = F.linear(dt, self.dt_proj.weight)  # (B, L, d_inner); the bias goes to the scan
        A = -torch.exp(self.A_log.float())  # (d_inner, n)
        # the scan's (b, d, l) arguments as views of time-major memory: no copies
        args = (
            *(v.transpose(1, 2) for v in (x, dt)),
            A,
            *(v.transpose(1, 2) for v in (B, C)),
            self.D.float(),
            z.transpose(1, 2),
            self.dt_proj.bias.float(),
            True,
        )
        if self._use_kernels(x) and x.shape[1] > 0:  # pragma: no cover - CUDA only
            y, new_ssm_state = _kernel_scan_with_state(
                _cuda_selective_scan_fn,
                *(a.contiguous() if isinstance(a, Tensor) else a for a in args),
                initial_state=ssm_state,
            )
        else:
            y, new_ssm_state = selective_scan(
                *args,
                initial_state=ssm_state,
                return_last_state=True,
                chunk_size=self.chunk_size,
            )
        out = self.out_proj(y.transpose(1, 2))  # (B, L, d_model)
        return out, (new_conv_state, new_ssm_state)


# ----------------------------------------------------------------------------- context encoder
class MambaBlock(nn.Module):
    """Pre-norm residual Mamba layer, ``x + Mamba(LayerNorm(x))``, in one scan direction.

    Args:
        dim: token dimension.
        reverse: scan right-to-left (the sequence is flipped around the mixer).
        **mamba_kwargs: passed to :class:`Mamba`.
    """

    def __init__(self, dim: int, reverse: bool = False, **mamba_kwargs: Any) -> None:
        super().__init__()
        self.reverse = reverse
        self.norm = nn.LayerNorm(dim)
        self.mixer = Mamba(dim, **mamba_kwargs)

    def mix(self, x: Tensor, state: MambaState | None = None) -> tuple[Tensor, MambaState]:
        """Residual update for a piece of sequence given in scan order.

        Args:
            x: (B, L, D) tokens, already in scan order (flipped by the caller if reverse).
            state: the mixer's state after the previous piece.

        Returns:
            ``(x + mixer(norm(x)) (B, L, D), new_state)``.
        """
        y, state = self.mixer(self.norm(x), state)
        return x + y, state

    def forward(self, x: Tensor) -> Tensor:
        """(B, N, D) -> (B, N, D), one pass over the whole sequence in this block's direction."""
        if self.reverse:
            return self.mix(x.flip(1))[0].flip(1)
        return self.mix(x)[0]


@register_context("mamba")
class MambaContext(ContextEncoder):
    """Bidirectional Mamba context encoder, as in xT (region tokens integrated by Mamba).

    Tokens get a trainable projection of the 2-D sine-cosine embedding of their (row, col);
    layers alternate direction (even: left-to-right, odd: right-to-left), so every token sees
    the whole sequence after two layers. :meth:`forward_chunked` gives the same result with
    memory bounded by a chunk of tokens per layer.

    Args:
        dim: token dimension.
        depth: number of Mamba layers.
        d_state: SSM state size.
        d_conv: causal convolution width.
        expand: inner width multiplier.
        chunk_size: chunk length of the pure-PyTorch scan (None: :func:`auto_chunk_size`).
        checkpoint_len: with :attr:`grad_checkpointing`, sequences longer than this run each
            layer in pieces of ``checkpoint_len`` tokens, each piece checkpointed with the scan
            and convolution state carried (and differentiated) across pieces, so the backward
            pass recomputes one piece at a time instead of a whole layer.
        **kwargs: ignored (``segment_len``, ``mem_len``, ``num_heads`` ... of the other
            encoders), so every context encoder takes one set of options.
    """

    def __init__(
        self,
        dim: int,
        depth: int = 2,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        chunk_size: int | None = None,
        checkpoint_len: int = 2048,
        **kwargs: Any,
    ) -> None:
        super().__init__(dim)
        if checkpoint_len < 1:
            raise ValueError(f"checkpoint_len must be >= 1, got {checkpoint_len}")
        self.depth = depth
        self.checkpoint_len = checkpoint_len
        self.pos_proj = nn.Linear(dim, dim)
        identity_init(self.pos_proj)
        self.blocks = nn.ModuleList(
            MambaBlock(
                dim,
                reverse=i % 2 == 1,
                d_state=d_state,
                d_conv=d_conv,
                expand=expand,
                chunk_size=chunk_size,
                layer_idx=i,
            )
            for i in range(depth)
        )
        self.norm = nn.LayerNorm(dim)
        # upstream MixerModel's pre-norm residual rescale of the output projections
        for block in self.blocks:
            w = block.mixer.out_proj.weight
            nn.init.kaiming_uniform_(w, a=math.sqrt(5))
            with torch.no_grad():
                w /= math.sqrt(max(depth, 1))

    def _embed(self, tokens: Tensor, coords: Tensor) -> Tensor:
        pos = self.pos_proj(sincos_2d(coords, self.dim).to(tokens.dtype))  # (N, D)
        return tokens + pos  # (B, N, D)

    def forward(self, tokens: Tensor, coords: Tensor, state: Any = None) -> tuple[Tensor, Any]:
        """Integrate context over the whole sequence in both directions.

        Args:
            tokens: (B, N, D) region tokens in scan order.
            coords: (N, 2) (row, col) of each token on the global token grid.
            state: ignored: a bidirectional encoder needs the whole sequence (use
                :meth:`forward_chunked` to bound memory).

        Returns:
            ``(out (B, N, D), None)``.
        """
        self._check(tokens, coords)
        x = self._embed(tokens, coords)
        if self.grad_checkpointing and torch.is_grad_enabled() and x.shape[1] > self.checkpoint_len:
            return self.norm(self._layers_in_pieces(x, self.checkpoint_len)), None
        for block in self.blocks:
            x = self.run_layer(block, x)
        return self.norm(x), None

    def forward_chunked(self, tokens: Tensor, coords: Tensor, chunk_len: int) -> Tensor:
        """:meth:`forward`, layer by layer, each layer over chunks of ``chunk_len`` tokens.

        Each layer's Mamba state is carried from chunk to chunk (reverse layers walk the chunks
        from the end), so the result equals :meth:`forward` while the activations of only one
        chunk are alive inside a layer.

        Args:
            tokens: (B, N, D) region tokens in scan order.
            coords: (N, 2) (row, col) of each token on the global token grid.
            chunk_len: tokens per chunk (>= 1).

        Returns:
            (B, N, D) tokens.
        """
        self._check(tokens, coords)
        if chunk_len < 1:
            raise ValueError(f"chunk_len must be >= 1, got {chunk_len}")
        return self.norm(self._layers_in_pieces(self._embed(tokens, coords), chunk_len))

    def _layers_in_pieces(self, x: Tensor, chunk_len: int) -> Tensor:
        """Every layer over pieces of ``chunk_len`` tokens, the mixer state carried across.

        Each piece goes through :meth:`run_layer`, so with :attr:`grad_checkpointing` the
        backward pass recomputes one piece at a time.
        """
        n = x.shape[1]
        starts = list(range(0, n, chunk_len))
        for block in self.blocks:
            state = None
            pieces: list[Tensor] = []
            for s in reversed(starts) if block.reverse else starts:
                piece = x[:, s : s + chunk_len]  # (B, <=chunk_len, D)
                if block.reverse:
                    piece = piece.flip(1)
                out, state = self.run_layer(block.mix, piece, state)
                pieces.append(out.flip(1) if block.reverse else out)
            if block.reverse:
                pieces.reverse()
            x = torch.cat(pieces, dim=1) if pieces else x
        return x
