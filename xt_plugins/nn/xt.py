"""XTModel: region encoder + context encoder + head, with timm's model conventions.

Shapes used throughout: B images, R regions per image (scan order), N = B * R region crops,
k x k context tokens per region, C channels of the region encoder's last stage.

.. versionadded:: 0.1
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .context import build_context
from .conventions import TimmConventions
from .heads import ClassifierHead, masked_mean
from .options import RUNTIME_OPTIONS, XT_OPTIONS
from .region import RegionEncoder
from .tokenize import RegionGrid

__all__ = ["RUNTIME_OPTIONS", "XTModel", "RegionLoader"]

_D = {name: option.default for name, option in XT_OPTIONS.items()}
RegionLoader = Callable[[Tensor], Tensor]
"""Reads the regions with the given indices: (n,) long -> (n, C, region, region)."""


class XTModel(TimmConventions, nn.Module):
    """xT: nested tokenization, a region encoder, a context encoder and a classifier head.

    Args:
        region_encoder: the per-region backbone.
        context: registered context encoder name (``none``, ``txl``, ``hyper``, ``mamba``).
        num_classes: classifier outputs (0: no classifier, ``forward`` returns pooled features).
        context_pool, context_dim, context_kwargs, drop_rate, global_pool, region_chunk,
            grad_ratio, checkpoint_regions, checkpoint_context: the xT options, documented
            once in :data:`xt_plugins.nn.options.XT_OPTIONS`.

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        region_encoder: RegionEncoder,
        context: str = "mamba",
        *,
        num_classes: int = 0,
        context_pool: int | None = _D["context_pool"],
        context_dim: int | None = _D["context_dim"],
        context_kwargs: dict[str, Any] | None = _D["context_kwargs"],
        drop_rate: float = _D["drop_rate"],
        global_pool: str = _D["global_pool"],
        region_chunk: int | None = _D["region_chunk"],
        grad_ratio: float = _D["grad_ratio"],
        checkpoint_regions: bool = _D["checkpoint_regions"],
        checkpoint_context: bool = _D["checkpoint_context"],
    ) -> None:
        super().__init__()
        if global_pool not in ("avg", ""):
            raise ValueError(f"global_pool must be 'avg' or '' (unpooled), got {global_pool!r}")
        if not 0.0 < grad_ratio <= 1.0:
            raise ValueError(f"grad_ratio must be in (0, 1], got {grad_ratio}")
        if region_chunk is not None and region_chunk <= 0:
            raise ValueError(f"region_chunk must be positive, got {region_chunk}")
        self.region_encoder = region_encoder
        self.region_size = region_encoder.region_size
        self.in_chans = region_encoder.in_chans
        self.context_name = context
        self.context_pool = context_pool
        self.region_chunk = region_chunk
        self.grad_ratio = grad_ratio
        self.checkpoint_regions = checkpoint_regions
        channels = region_encoder.channels[-1]
        self.num_features = self.head_hidden_size = channels
        self.last_stride = region_encoder.reductions[-1]
        last_side = self.region_size // self.last_stride
        if context_pool is not None and not 0 < context_pool <= last_side:
            raise ValueError(
                f"context_pool must be in 1..{last_side} for these regions, got {context_pool}"
            )
        dim = context_dim or channels
        if context == "none":
            self.context_in: nn.Module = nn.Identity()
            self.context = build_context("none", dim, **(context_kwargs or {}))
            self.context_out: nn.Module | None = None
        else:
            self.context_in = nn.Linear(channels, dim) if dim != channels else nn.Identity()
            self.context = build_context(context, dim, **(context_kwargs or {}))
            self.context_out = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, channels))
        self.checkpoint_context = checkpoint_context
        # One identity per stage, applied to the stitched whole-image maps: the modules that
        # ``feature_info`` names, so timm's hook-based feature extractors can hook them.
        self.feature_taps = nn.ModuleList(nn.Identity() for _ in region_encoder.channels)
        self.head = ClassifierHead(channels, num_classes, drop_rate)  # last child (TorchGeo)
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.feature_info = [
            dict(num_chs=c, reduction=s, module=f"feature_taps.{i}")
            for i, (c, s) in enumerate(
                zip(region_encoder.channels, region_encoder.reductions, strict=True)
            )
        ]

    @property
    def checkpoint_context(self) -> bool:
        """Whether the context encoder recomputes its layers in the backward pass."""
        return self.context.grad_checkpointing

    @checkpoint_context.setter
    def checkpoint_context(self, enable: bool) -> None:
        self.context.grad_checkpointing = bool(enable)

    # ------------------------------------------------------------------ geometry
    @property
    def tokens_per_side(self) -> int:
        """k: context tokens per region side."""
        return self.context_pool or self.region_size // self.last_stride

    def grid_for(self, height: int, width: int) -> RegionGrid:
        """The region grid over an image of ``height x width`` pixels."""
        return RegionGrid(height, width, self.region_size)

    # ------------------------------------------------------------------ regions
    def encode_regions(
        self,
        regions: Tensor | RegionLoader,
        num_regions: int | None = None,
        stages: Sequence[int] | None = None,
    ) -> list[Tensor]:
        """Run the region encoder over regions in chunks, keeping only ``stages``.

        Honors ``region_chunk``, ``checkpoint_regions`` and (in training) ``grad_ratio``.

        Args:
            regions: (N, C, r, r) crops, or a loader that reads crops by index (so a training
                step never holds the whole image; with checkpointing the loader runs again
                in the backward pass).
            num_regions: N, required with a loader.
            stages: indices of the stages to return (default: all).

        Returns:
            One (N, C_s, r / s, r / s) tensor per requested stage, in region order.
        """
        if isinstance(regions, Tensor):
            crops = regions
            n = crops.shape[0]

            def load(idx: Tensor) -> Tensor:
                return crops.index_select(0, idx.to(crops.device))
        else:
            if num_regions is None:
                raise ValueError("num_regions is required when regions is a loader")
            n, load = num_regions, regions
        stages = (
            tuple(range(len(self.region_encoder.channels))) if stages is None else tuple(stages)
        )
        return list(self.map_regions(lambda idx: self._encode_stages(load, idx, stages), n))

    def map_regions(self, fn: Callable[[Tensor], tuple[Tensor, ...]], n: int) -> tuple[Tensor, ...]:
        """Apply ``fn`` to region indices in chunks; concatenate its outputs in region order.

        This is where ``region_chunk`` (chunks of at most that many regions),
        ``checkpoint_regions`` (each chunk recomputed in the backward pass) and ``grad_ratio``
        (in training, a random subset of regions keeps gradients; the rest run without and
        are put back in their original order) take effect.

        Args:
            fn: maps (n_chunk,) long region indices to a tuple of (n_chunk, ...) tensors.
            n: number of regions.

        Returns:
            The concatenated tuple, each (n, ...).
        """
        device = next(self.parameters()).device
        grad_on = torch.is_grad_enabled()
        parts = [(torch.arange(n, device=device), grad_on)]
        if grad_on and self.training and self.grad_ratio < 1.0:
            perm = torch.randperm(n, device=device)
            n_grad = max(1, math.ceil(n * self.grad_ratio))
            parts = [(perm[:n_grad].sort().values, True), (perm[n_grad:].sort().values, False)]
        chunk = self.region_chunk or max(n, 1)
        outs: list[tuple[Tensor, ...]] = []
        done: list[Tensor] = []
        for idx, keep_grad in parts:
            with torch.set_grad_enabled(keep_grad):
                for start in range(0, idx.numel(), chunk):
                    sub = idx[start : start + chunk]
                    # (torch.export cannot trace activation checkpointing: it runs plain)
                    if keep_grad and self.checkpoint_regions and not torch.compiler.is_exporting():
                        outs.append(checkpoint(fn, sub, use_reentrant=False))
                    else:
                        outs.append(fn(sub))
                    done.append(sub)
        cat = tuple(torch.cat(group, dim=0) for group in zip(*outs, strict=True))
        if len(parts) == 1:
            return cat
        # Put regions back in scan order (differentiable for the rows that kept gradients).
        inverse = torch.empty(n, dtype=torch.long, device=device)
        inverse[torch.cat(done)] = torch.arange(n, device=device)
        return tuple(c.index_select(0, inverse) for c in cat)

    def _encode_stages(
        self, load: RegionLoader, idx: Tensor, stages: tuple[int, ...]
    ) -> tuple[Tensor, ...]:
        device = next(self.parameters()).device
        feats = self.region_encoder(load(idx).to(device))
        return tuple(feats[s] for s in stages)

    # ------------------------------------------------------------------ context
    def pool_tokens(self, last: Tensor) -> Tensor:
        """Per-region context tokens from last-stage maps: (N, C, h, w) -> (N, k*k, C)."""
        if self.context_pool is not None and self.context_pool != last.shape[-1]:
            last = F.adaptive_avg_pool2d(last, self.context_pool)
        return last.flatten(2).transpose(1, 2)

    def contextualize(self, tokens: Tensor, coords: Tensor) -> Tensor:
        """Context encoder over one image's token sequence, projected back to C channels.

        Args:
            tokens: (B, T, C) tokens in scan order.
            coords: (T, 2) global token positions.

        Returns:
            (B, T, C) context to add to the last stage (zeros for ``none``).
        """
        if self.context_out is None:
            return torch.zeros_like(tokens)
        out, _ = self.context(self.context_in(tokens), coords)
        return self.context_out(out)

    def fuse_context(self, last: Tensor, context: Tensor) -> Tensor:
        """Add per-region context (N, k*k, C) to last-stage maps (N, C, h, w)."""
        n, c, h, w = last.shape
        k = self.tokens_per_side
        ctx = context.transpose(1, 2).reshape(n, c, k, k)
        if k != h or k != w:
            ctx = F.interpolate(ctx, size=(h, w), mode="nearest")
        return last + ctx

    def _apply_context(
        self, last: Tensor, grid: RegionGrid, batch: int, region_mask: Tensor | None
    ) -> Tensor:
        if self.context_out is None:
            return last
        k2 = self.tokens_per_side**2
        tokens = self.pool_tokens(last).reshape(batch, grid.num_regions * k2, -1)  # (B, R*k*k, C)
        coords = grid.token_coords(self.tokens_per_side, device=last.device)  # (R*k*k, 2)
        if region_mask is None:
            ctx = self.contextualize(tokens, coords)
        else:
            ctx = torch.zeros_like(tokens)
            token_mask = region_mask.repeat_interleave(k2, dim=1)  # (B, R*k*k)
            for b in range(batch):
                keep = token_mask[b].nonzero().squeeze(1)
                if keep.numel():
                    ctx[b, keep] = self.contextualize(tokens[b : b + 1, keep], coords[keep])[0]
        return self.fuse_context(last, ctx.reshape(batch * grid.num_regions, k2, -1))

    # ------------------------------------------------------------------ forward
    def _pyramid(
        self, x: Tensor, stages: Sequence[int], region_mask: Tensor | None = None
    ) -> tuple[RegionGrid, list[Tensor]]:
        if x.ndim != 4:
            raise ValueError(f"expected (B, C, H, W), got {tuple(x.shape)}")
        if x.shape[1] != self.in_chans:
            raise ValueError(f"expected {self.in_chans} input channels, got {x.shape[1]}")
        b = x.shape[0]
        grid = self.grid_for(*x.shape[-2:])
        regions = grid.nest(x)  # (B*R, C, r, r)
        last_stage = len(self.region_encoder.channels) - 1
        stages = tuple(sorted(set(stages) | {last_stage}))
        if region_mask is None:
            feats = self.encode_regions(regions, stages=stages)
        else:
            region_mask = region_mask.to(device=x.device, dtype=torch.bool).reshape(
                b, grid.num_regions
            )
            feats = self._encode_masked(regions, region_mask.flatten(), stages)
        feats[-1] = self._apply_context(feats[-1], grid, b, region_mask)
        return grid, [feats[stages.index(s)] for s in stages]

    def _encode_masked(
        self, regions: Tensor, valid: Tensor, stages: tuple[int, ...]
    ) -> list[Tensor]:
        keep = valid.nonzero().squeeze(1)
        feats = (
            self.encode_regions(regions.index_select(0, keep), stages=stages)
            if keep.numel()
            else None
        )
        out = []
        for i, s in enumerate(stages):
            side = self.region_size // self.region_encoder.reductions[s]
            full = regions.new_zeros(regions.shape[0], self.region_encoder.channels[s], side, side)
            out.append(full if feats is None else full.index_copy(0, keep, feats[i]))
        return out

    def forward_features(self, x: Tensor, region_mask: Tensor | None = None) -> Tensor:
        """Last-stage map with context, stitched over the image.

        When a hook is registered on one of the ``feature_taps`` (timm's hook-based feature
        extractors), the whole pyramid is stitched and passed through them; otherwise only
        the last stage is kept (no extra memory).

        Args:
            x: (B, C, H, W) image, any H and W.
            region_mask: optional (B, R) bool, False for regions to skip (no tissue, nodata).

        Returns:
            (B, C_last, ceil(H / 32), ceil(W / 32)).
        """
        last = len(self.region_encoder.channels) - 1
        hooked = any(t._forward_hooks or t._forward_pre_hooks for t in self.feature_taps)
        stages = list(range(last + 1)) if hooked else [last]
        grid, feats = self._pyramid(x, stages, region_mask)
        maps = [
            self.feature_taps[s](
                grid.unnest(f, x.shape[0], crop_stride=self.region_encoder.reductions[s])
            )
            for s, f in zip(stages, feats, strict=True)
        ]
        return maps[-1]

    def token_weights(
        self, grid: RegionGrid, batch: int, region_mask: Tensor | None, device=None
    ) -> Tensor:
        """(B, 1, h, w) weights for pooling the cropped last-stage map (0 on skipped regions)."""
        side = self.region_size // self.last_stride
        mask = (
            torch.ones(batch, grid.num_regions, device=device)
            if region_mask is None
            else region_mask.float()
        )
        maps = mask.reshape(batch * grid.num_regions, 1, 1, 1).expand(-1, 1, side, side)
        return grid.unnest(maps.contiguous(), batch, crop_stride=self.last_stride)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Classify a (B, C, h, w) map (mean-pooled) or already pooled (B, C) features.

        With ``global_pool=''`` a map stays unpooled: the head runs at every position and
        returns (B, num_classes or C, h, w).
        """
        if x.ndim == 4 and not self.global_pool:
            out = self.head(x.permute(0, 2, 3, 1), pre_logits=pre_logits)  # (B, h, w, K)
            return out.permute(0, 3, 1, 2)
        pooled = masked_mean(x) if x.ndim == 4 else x
        return self.head(pooled, pre_logits=pre_logits)

    def forward(self, x: Tensor, region_mask: Tensor | None = None) -> Tensor:
        """Image-level output: (B, num_classes), or (B, C) pooled features without a classifier.

        With ``global_pool=''``: the unpooled (B, num_classes or C, h, w) map instead.
        """
        feat = self.forward_features(x, region_mask)
        if region_mask is None or not self.global_pool:
            return self.forward_head(feat)
        grid = self.grid_for(*x.shape[-2:])
        weights = self.token_weights(
            grid, x.shape[0], region_mask.reshape(x.shape[0], -1), x.device
        )
        return self.forward_head(masked_mean(feat, weights))
