"""Transformer-XL context encoder: segment recurrence with memory carried forward.

The token sequence is cut into segments of ``segment_len`` tokens. Each layer attends over its
own segment plus a memory of the last ``mem_len`` hidden states it saw in earlier segments
(stop-gradient, as in Transformer-XL). The memory is returned as state, so streaming code can
feed one segment at a time and get exactly what one pass over the whole sequence gives.

.. versionadded:: 0.1
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import (
    ContextEncoder,
    identity_init,
    num_heads_for,
    register_context,
    sincos_2d,
    trunc_normal_init,
)

__all__ = ["TransformerXLContext", "MemoryAttentionBlock"]


class MemoryAttentionBlock(nn.Module):
    """Pre-norm transformer block whose keys and values include a memory of earlier segments.

    Args:
        dim: token dimension.
        num_heads: attention heads.
        mlp_ratio: hidden size of the MLP relative to ``dim``.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.norm1 = nn.LayerNorm(dim)
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: Tensor, memory: Tensor | None) -> Tensor:
        """Attend from the segment ``x`` (B, S, D) over ``[memory; x]`` (B, M + S, D)."""
        b, s, d = x.shape
        h = self.num_heads
        xn = self.norm1(x)
        ctx = xn if memory is None else torch.cat([self.norm1(memory), xn], dim=1)  # (B, M+S, D)
        q = self.q(xn).reshape(b, s, h, d // h).transpose(1, 2)  # (B, H, S, d)
        k, v = self.kv(ctx).reshape(b, ctx.shape[1], 2, h, d // h).permute(2, 0, 3, 1, 4)
        attn = F.scaled_dot_product_attention(q, k, v)  # (B, H, S, d)
        x = x + self.proj(attn.transpose(1, 2).reshape(b, s, d))
        return x + self.mlp(self.norm2(x))


@register_context("txl")
class TransformerXLContext(ContextEncoder):
    """Transformer-XL over region tokens, positions from the tokens' (row, col).

    Args:
        dim: token dimension.
        depth: number of layers.
        num_heads: attention heads (default: ``dim // 32``, a divisor of ``dim``).
        mlp_ratio: MLP width relative to ``dim``.
        segment_len: tokens per segment.
        mem_len: tokens of memory each layer keeps from earlier segments.
        **kwargs: options of the other registered context encoders, accepted and ignored (one
            option set serves every encoder); any other name raises ``TypeError``.

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        dim: int,
        depth: int = 2,
        num_heads: int | None = None,
        mlp_ratio: float = 4.0,
        segment_len: int = 256,
        mem_len: int = 256,
        **kwargs: Any,
    ) -> None:
        super().__init__(dim, **kwargs)
        if segment_len <= 0 or mem_len < 0:
            raise ValueError(
                f"segment_len must be > 0 and mem_len >= 0, got {segment_len}, {mem_len}"
            )
        self.segment_len = segment_len
        self.mem_len = mem_len
        self.pos = nn.Linear(dim, dim)
        heads = num_heads or num_heads_for(dim)
        self.layers = nn.ModuleList(
            MemoryAttentionBlock(dim, heads, mlp_ratio) for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim)
        trunc_normal_init(self)
        identity_init(self.pos)

    def forward(
        self, tokens: Tensor, coords: Tensor, state: list[Tensor | None] | None = None
    ) -> tuple[Tensor, list[Tensor | None]]:
        """Run the sequence segment by segment, carrying each layer's memory.

        Args:
            tokens: (B, N, D).
            coords: (N, 2) global (row, col) of each token.
            state: per-layer memories from a previous call (None: empty memory).

        Returns:
            ``(out, memories)``: (B, N, D) and the per-layer memories after the last segment.
        """
        self._check(tokens, coords)
        x = tokens + self.pos(sincos_2d(coords, self.dim).to(tokens.dtype))  # (B, N, D)
        mems: list[Tensor | None] = list(state) if state is not None else [None] * len(self.layers)
        outs = []
        for start in range(0, x.shape[1], self.segment_len):
            h = x[:, start : start + self.segment_len]  # (B, S, D)
            new_mems: list[Tensor | None] = []
            for layer, mem in zip(self.layers, mems, strict=True):
                new_mems.append(self._update_memory(mem, h))
                h = self.run_layer(layer, h, mem)
            mems = new_mems
            outs.append(self.norm(h))
        return torch.cat(outs, dim=1), mems

    def _update_memory(self, mem: Tensor | None, h: Tensor) -> Tensor | None:
        if self.mem_len == 0:
            return None
        cat = h if mem is None else torch.cat([mem, h], dim=1)
        return cat[:, -self.mem_len :].detach()
