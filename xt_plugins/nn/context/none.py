"""The region-only baseline: no context, tokens pass through unchanged."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from .base import ContextEncoder, register_context


@register_context("none")
class NoContext(ContextEncoder):
    """Identity context encoder: the xT model reduces to the region encoder alone.

    Args:
        dim: token dimension.
        **kwargs: options of the other registered context encoders, accepted and ignored (one
            option set serves every encoder); any other name raises ``TypeError``.
    """

    def __init__(self, dim: int, **kwargs: Any) -> None:
        super().__init__(dim, **kwargs)

    def forward(self, tokens: Tensor, coords: Tensor, state: Any = None) -> tuple[Tensor, Any]:
        """Return ``tokens`` unchanged (and no state)."""
        self._check(tokens, coords)
        return tokens, None
