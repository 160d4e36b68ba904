"""timm's model conventions for :class:`~xt_plugins.nn.XTModel` (a mixin).

``forward_intermediates``, ``prune_intermediate_layers``, ``get_classifier``,
``reset_classifier``, ``set_grad_checkpointing``, ``no_weight_decay``, ``group_matcher``:
what timm's feature extractors, optimizer factory and ``pretrained_cfg`` machinery call.

.. versionadded:: 0.2
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .optim import xt_group_matcher, xt_no_weight_decay

__all__ = ["TimmConventions"]


class TimmConventions:
    """timm's model API over an xT model's ``_pyramid``, ``feature_info`` and ``head``."""

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Switch activation checkpointing on or off (timm's convention).

        Covers the region encoder's chunks and the context encoder's layers
        (``checkpoint_regions`` and ``checkpoint_context``).
        """
        self.checkpoint_regions = bool(enable)
        self.checkpoint_context = bool(enable)

    def forward_intermediates(
        self,
        x: Tensor,
        indices: int | Sequence[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[Tensor] | tuple[Tensor, list[Tensor]]:
        """Feature pyramid stitched over the whole image (timm's ``forward_intermediates``).

        Args:
            x: (B, C, H, W).
            indices: stages to return (int: last n; None: all).
            norm: unused (kept for timm compatibility).
            stop_early: unused (the last stage is always computed for context).
            output_fmt: ``NCHW`` or ``NHWC``.
            intermediates_only: return only the list of maps.

        Returns:
            Maps at strides 4, 8, 16, 32 (cropped to ``ceil(H / s)``), the last one with
            context; with ``intermediates_only=False`` also the last map first.
        """
        from timm.models._features import feature_take_indices

        take, _ = feature_take_indices(len(self.feature_info), indices)
        grid, feats = self._pyramid(x, take)
        all_stages = sorted(set(take) | {len(self.feature_info) - 1})
        maps = {
            s: self.feature_taps[s](
                grid.unnest(f, x.shape[0], crop_stride=self.feature_info[s]["reduction"])
            )
            for s, f in zip(all_stages, feats, strict=True)
        }
        out = [maps[s] for s in take]
        if output_fmt == "NHWC":
            out = [o.permute(0, 2, 3, 1) for o in out]
        if intermediates_only:
            return out
        return maps[all_stages[-1]], out

    def prune_intermediate_layers(
        self, indices: int | Sequence[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """Prepare for timm feature extraction: drops the classifier; returns the stage indices."""
        from timm.models._features import feature_take_indices

        take, _ = feature_take_indices(len(self.feature_info), indices)
        if prune_head:
            self.reset_classifier(0)
        return take

    def get_classifier(self) -> nn.Module:
        """The final linear layer (Identity when there is none)."""
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the classifier with one of ``num_classes`` outputs (0 removes it).

        Args:
            num_classes: outputs of the new classifier (0: none).
            global_pool: ``avg`` or ``''`` (``forward`` returns the unpooled map); None keeps
                the current pooling.
        """
        if global_pool is not None:
            if global_pool not in ("avg", ""):
                raise ValueError(f"global_pool must be 'avg' or '', got {global_pool!r}")
            self.global_pool = global_pool
        self.head.reset(num_classes)
        self.num_classes = num_classes

    # ------------------------------------------------------------------ optimizers
    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Names of parameters that must not be weight-decayed (timm's convention).

        Mamba's ``A_log`` and ``D``, biases, norms, positional projections / embeddings,
        class tokens and Swin's scales and position tables (:func:`.optim.xt_no_weight_decay`).
        ``timm.optim.create_optimizer_v2`` reads this; :func:`.optim.weight_decay_groups`
        builds the two parameter groups for any optimizer.
        """
        return xt_no_weight_decay(self)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """Parameter groups for layer-wise learning-rate decay (timm's convention).

        Stem, then one block per region-encoder stage, the context encoder, the head
        (:func:`.optim.xt_group_matcher`).

        Args:
            coarse: unused (groups are per stage either way).
        """
        return xt_group_matcher(self)

    def first_conv_name(self) -> str:
        """Name of the region encoder's stem convolution (``pretrained_cfg["first_conv"]``)."""
        for name, module in self.named_modules():
            if isinstance(module, nn.Conv2d) and name.startswith("region_encoder."):
                return name
        raise AttributeError("the region encoder has no Conv2d stem")
