"""The streaming no-grad selective scan: reused buffers, out= ops, few Python steps.

Only the output is as long as the sequence; everything else lives in small buffers reused
across chunks and calls. This path is for eager inference: its ``out=`` ops into strided views
are not traceable, so :func:`~.selective_scan.selective_scan` takes the differentiable path
(:mod:`.scan_autograd`) under ``torch.compile`` / ``torch.export``.

.. versionadded:: 0.1
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from . import threads as _threads

if TYPE_CHECKING:
    from .selective_scan import ScanInputs

__all__ = ["scan_streaming"]

_LN2 = math.log(2.0)


def _softplus_(x: Tensor, tmp: Tensor) -> Tensor:
    """``F.softplus`` in place, without ``log1p``; ``tmp`` is scratch of ``x``'s shape.

    ``softplus(x) = max(x, 0) + log1p(e)`` with ``e = exp(-|x|)``, and
    ``log1p(e) = 2 atanh(e / (2 + e)) = 2 atanh(sigmoid(-|x| - log 2))``: a few ulps from
    ``F.softplus`` everywhere, with only vectorised kernels (torch's CPU ``log1p``, which
    ``F.softplus`` uses, is several times slower than ``exp`` + ``log``: see
    ``benchmarks/README.md``).
    """
    torch.sub(x.new_tensor(-_LN2), torch.abs(x, out=tmp), out=tmp).sigmoid_().atanh_()
    return x.clamp_(min=0.0).add_(tmp, alpha=2.0)


def _transpose_into(src: Tensor, dst: Tensor) -> None:
    """``dst.copy_(src.t())`` for 2-D tensors, through PyTorch's blocked 2-D transpose.

    That path needs contiguous memory on both sides; into a strided ``dst`` (batch > 1) a
    contiguous transposed copy first is still faster than the strided copy.
    """
    strided_dst = src.numel() >= 4096 and src.is_contiguous() and not dst.is_contiguous()
    dst.copy_(src.t().contiguous() if strided_dst else src.t())


def _head(buf: Tensor, *shape: int) -> Tensor:
    """A contiguous ``shape`` view on the start of a flat-able buffer."""
    return buf.view(-1)[: math.prod(shape)].view(shape)


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


def scan_streaming(
    inputs: ScanInputs, h: Tensor, t: int, k: int, stage_len: int = 1024
) -> tuple[Tensor, Tensor]:
    """No-autograd scan that streams: only the output is as long as the sequence.

    The sequence is staged ``~stage_len`` steps at a time: step sizes and ``delta * u`` are
    prepared in the caller's layout and laid out step-major, (l, b, d), in small reused buffers
    (a copy for time-major inputs, one 2-D transpose each for channel-major ones), scanned chunk
    by chunk (:func:`_scan_chunk`, whose blocks are plain views of those buffers), and the
    outputs are skip-connected, gated and written in the layout of ``u``.

    Args:
        inputs: the scan's operands.
        h: (b, n, d) float32 state before the first step.
        t: steps per sub-chunk.
        k: sub-chunks per chunk.
        stage_len: steps prepared per stage (rounded down to whole chunks).

    Returns:
        ``(out (b, d, l) float32 in u's memory layout, state (b, n, d))``.
    """
    with _threads.ScopedThreads() as threads:
        return _scan_stages(inputs, h, t, k, stage_len, threads)


def _scan_stages(
    inputs: ScanInputs, h: Tensor, t: int, k: int, stage_len: int, threads: _threads.ScopedThreads
) -> tuple[Tensor, Tensor]:
    """:func:`scan_streaming`'s work, with the thread count set per chunk through ``threads``."""
    u, delta, _, B, C, D, z, delta_bias, delta_softplus = inputs
    At2 = inputs.exp2_rates()  # (n, d)
    b, d, length = u.shape
    n = At2.shape[0]
    span = t * k
    wide = threads.original
    governed = _threads.ADAPTIVE_THREADS and wide > 1 and u.device.type == "cpu"
    gov = _threads.GOVERNOR
    work = span * b * n * d  # elements of a full chunk's (b, n, d) steps
    size = gov.bucket(work)
    if governed:  # every parallel op counts on a busy machine, the set-up ones too
        threads.set(gov.best(size, wide))
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
    first = True
    for s0 in range(0, length, stage):
        if governed:
            threads.set(gov.best(size, wide))
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
            timed = governed and c1 - c0 == span and not first  # the first allocates buffers
            if timed:
                choice, exploring = gov.choose(size, wide)
                threads.set(choice)
                start = time.perf_counter()
            elif governed:
                threads.set(gov.best(size, wide))
            h = _scan_chunk(dv, duv, bc[..., 0, :], bc[..., 1, :], h, At2, ws, yv, accumulate)
            if timed:
                gov.record(size, choice, time.perf_counter() - start, work, exploring)
            first = False
        if governed:
            threads.set(gov.best(size, wide))
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
