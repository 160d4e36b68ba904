"""The official xT classification model: Swin-V2 regions, stitched, then the official head.

.. versionadded:: 0.2
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..region import RegionEncoder
from .layers import OfficialContext, OfficialHead, OfficialPoolHead

__all__ = ["OfficialXT"]


class OfficialXT(nn.Module):
    """An official xT classification model: Swin-V2 regions, stitched, then the official head.

    Args:
        backbone: timm region encoder (``swinv2_tiny_window16_256``, ...).
        region_size: region side in pixels (the official ``backbone.input_size``).
        num_classes: classifier outputs (0: features).
        in_chans: input channels.
        cls_head: ``xl`` (context head) or ``naive`` (pooled MLP head).
        hidden_size: context token channels (``xl``).
        n_layer: context layers (``xl``).
        attention_method: ``hyper``, ``naive`` or ``mamba`` (``xl``).
        in_context_patches: context window in tokens, <= 0 for all at once (``xl``).
        mlp_ratio: MLP width multiplier.
        region_chunk: encode at most this many regions at a time (None: all at once, as
            officially; the result is the same).
        **backbone_kwargs: passed to ``timm.create_model`` (``embed_dim``, ``depths``, ...).

    Input: (B, in_chans, H, W) normalised with the ImageNet mean and std, H and W multiples of
    ``region_size`` (the official code takes square images only). Above 4096 tokens per context
    pass the official HyperAttention switches to a randomised approximation; this model stays exact.
    """

    def __init__(
        self,
        backbone: str = "swinv2_tiny_window16_256",
        region_size: int = 256,
        num_classes: int = 284,
        in_chans: int = 3,
        cls_head: str = "xl",
        hidden_size: int = 768,
        n_layer: int = 2,
        attention_method: str = "hyper",
        in_context_patches: int = -1,
        mlp_ratio: int = 4,
        region_chunk: int | None = None,
        **backbone_kwargs: Any,
    ) -> None:
        super().__init__()
        if cls_head not in ("xl", "naive"):
            raise ValueError(f"cls_head must be 'xl' or 'naive', got {cls_head!r}")
        self.cls_head = cls_head
        self.region_size = region_size
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.region_chunk = region_chunk
        self.region_encoder = RegionEncoder(
            backbone, region_size=region_size, in_chans=in_chans, **backbone_kwargs
        )
        channels = self.region_encoder.channels[-1]
        if cls_head == "xl":
            self.context: OfficialContext | None = OfficialContext(
                channels, hidden_size, n_layer, attention_method, in_context_patches, mlp_ratio
            )
            self.num_features = self.head_hidden_size = hidden_size
            self.head: nn.Module = OfficialHead(hidden_size, num_classes)
        else:
            self.context = None
            self.num_features = channels
            self.head_hidden_size = channels * mlp_ratio
            self.head = OfficialPoolHead(channels, num_classes, mlp_ratio)

    def forward_regions(self, x: Tensor) -> Tensor:
        """Encode every region and stitch the last stage back onto the image grid.

        Args:
            x: (B, C, H, W), H and W multiples of ``region_size``.

        Returns:
            (B, C_last, H / 32, W / 32) for Swin-V2.
        """
        b, c, height, width = x.shape
        r = self.region_size
        if height % r or width % r or height == 0 or width == 0:
            raise ValueError(
                f"input {height}x{width} is not a grid of {r}-px regions; resize or pad it to "
                f"multiples of {r} (the official model takes square multiples)"
            )
        nh, nw = height // r, width // r
        regions = x.reshape(b, c, nh, r, nw, r).permute(0, 2, 4, 1, 3, 5).reshape(-1, c, r, r)
        step = self.region_chunk or regions.shape[0]
        feats = torch.cat(
            [self.region_encoder(regions[i : i + step])[-1] for i in range(0, len(regions), step)]
        )  # (B nh nw, C', h, w)
        _, cl, h, w = feats.shape
        feats = feats.reshape(b, nh, nw, cl, h, w).permute(0, 3, 1, 4, 2, 5)
        return feats.reshape(b, cl, nh * h, nw * w)

    def forward_features(self, x: Tensor) -> Tensor:
        """Image features before the classifier.

        Args:
            x: (B, C, H, W) image.

        Returns:
            ``xl``: the (B, hidden_size) cls output of the context head (mean over windows);
            ``naive``: the (B, C_last, H / 32, W / 32) stitched map.
        """
        fmap = self.forward_regions(x)
        return fmap if self.context is None else self.context(fmap)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Classify :meth:`forward_features` output (normalised features with ``pre_logits``)."""
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) image -> (B, num_classes) logits."""
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        """The final linear layer (Identity when there is none)."""
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the classifier with a fresh one of ``num_classes`` outputs (0 removes it)."""
        self.num_classes = num_classes
        self.head.fc = (
            nn.Linear(self.head_hidden_size, num_classes) if num_classes > 0 else nn.Identity()
        )

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Parameters the official optimiser would not decay: cls token, Mamba ``A_log`` / ``D``."""
        return {
            name
            for name, _ in self.named_parameters()
            if name.endswith(("cls_token", ".A_log", ".D"))
        }
