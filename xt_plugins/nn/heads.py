"""Heads on top of the xT feature pyramid.

.. versionadded:: 0.1
"""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["ClassifierHead", "masked_mean"]


def masked_mean(feat: Tensor, weight: Tensor | None = None) -> Tensor:
    """Mean of a (B, C, H, W) map over space, optionally weighted by (B, 1, H, W).

    Args:
        feat: feature map.
        weight: non-negative weights (e.g. 1 for valid tokens, 0 for masked regions).

    Returns:
        (B, C) pooled features; a sample whose weights are all zero pools to zeros.
    """
    if weight is None:
        return feat.mean(dim=(-2, -1))
    total = weight.sum(dim=(-2, -1)).clamp_min(1e-6)  # (B, 1)
    return (feat * weight).sum(dim=(-2, -1)) / total


class ClassifierHead(nn.Module):
    """LayerNorm, dropout and a linear classifier over pooled features.

    Args:
        in_features: channels of the pooled features.
        num_classes: outputs; 0 makes the head return the normalised features.
        drop_rate: dropout before the classifier.
    """

    def __init__(self, in_features: int, num_classes: int = 0, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.in_features = in_features
        self.norm = nn.LayerNorm(in_features)
        self.drop = nn.Dropout(drop_rate)
        self.fc: nn.Module = nn.Identity()
        self.reset(num_classes)

    @property
    def num_classes(self) -> int:
        """Number of outputs (0 when the classifier is removed)."""
        return self.fc.out_features if isinstance(self.fc, nn.Linear) else 0

    def reset(self, num_classes: int) -> None:
        """Replace the classifier with a fresh one of ``num_classes`` outputs (0: none)."""
        self.fc = nn.Linear(self.in_features, num_classes) if num_classes > 0 else nn.Identity()
        if isinstance(self.fc, nn.Linear):
            nn.init.trunc_normal_(self.fc.weight, std=0.02)
            nn.init.zeros_(self.fc.bias)

    def forward(self, pooled: Tensor, pre_logits: bool = False) -> Tensor:
        """Classify pooled (B, C) features (or return them normalised with ``pre_logits``)."""
        x = self.drop(self.norm(pooled))
        return x if pre_logits else self.fc(x)
