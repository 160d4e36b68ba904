"""Mamba context encoder: bidirectional Mamba layers over the region token sequence.

The pieces live one level down, as in ``mamba_ssm`` and ``mambapy``: the selective scan in
:mod:`xt_plugins.nn.ops` and the :class:`~xt_plugins.nn.layers.Mamba` mixer and
:class:`~xt_plugins.nn.layers.MambaBlock` in :mod:`xt_plugins.nn.layers`. Their public names
are re-exported here, so ``from xt_plugins.nn.context.mamba import Mamba, selective_scan``
keeps working.

.. versionadded:: 0.1
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from ..layers.mamba import Mamba, MambaBlock, MambaState
from ..ops.scan_kernels import HAS_CAUSAL_CONV1D, HAS_MAMBA_SSM
from ..ops.selective_scan import ScanInputs, auto_chunk_size, selective_scan, selective_scan_ref
from .base import ContextEncoder, identity_init, register_context, sincos_2d

__all__ = [
    "HAS_MAMBA_SSM",
    "HAS_CAUSAL_CONV1D",
    "ScanInputs",
    "selective_scan_ref",
    "selective_scan",
    "auto_chunk_size",
    "Mamba",
    "MambaBlock",
    "MambaState",
    "MambaContext",
]


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
        chunk_size: chunk length of the pure-PyTorch scan (None:
            :func:`~xt_plugins.nn.ops.auto_chunk_size`).
        checkpoint_len: with :attr:`grad_checkpointing`, sequences longer than this run each
            layer in pieces of ``checkpoint_len`` tokens, each piece checkpointed with the scan
            and convolution state carried (and differentiated) across pieces, so the backward
            pass recomputes one piece at a time instead of a whole layer.
        **kwargs: options of the other registered context encoders, accepted and ignored (one
            option set serves every encoder); any other name raises ``TypeError``.
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
        super().__init__(dim, **kwargs)
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
