"""xView3 scoring as a torchmetrics ``Metric`` (:class:`XView3Metric`).

The matching, the counts and the scores, with the rules behind them, live in
:mod:`xt_plugins.data.xview3` and are re-exported here.

.. versionadded:: 0.1
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import fields
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric

from ..data.xview3 import (
    MATCH_DISTANCE_M,
    SHORE_DISTANCE_KM,
    Detections,
    XView3Counts,
    match_detections,
    xview3_counts,
    xview3_score,
)

__all__ = [
    "MATCH_DISTANCE_M",
    "SHORE_DISTANCE_KM",
    "XView3Counts",
    "XView3Metric",
    "match_detections",
    "xview3_counts",
    "xview3_score",
]


class XView3Metric(Metric):
    """torchmetrics wrapper of the xView3 score: matches per image, sums counts, DDP-ready.

    ``update(preds, targets)`` takes one detection table per image (see :func:`xview3_counts`;
    arrays or tensors); ``compute()`` returns the components and the aggregate as tensors.

    Args:
        match_distance: largest distance of a match (metres).
        shore_distance_km: close-to-shore threshold (km).
        **kwargs: :class:`torchmetrics.Metric` options.

    .. versionadded:: 0.1
    """

    full_state_update = False
    higher_is_better = True
    is_differentiable = False

    def __init__(
        self,
        match_distance: float = MATCH_DISTANCE_M,
        shore_distance_km: float = SHORE_DISTANCE_KM,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.match_distance = match_distance
        self.shore_distance_km = shore_distance_km
        for f in fields(XView3Counts):
            self.add_state(
                f.name, default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum"
            )

    def update(self, preds: Sequence[Detections], targets: Sequence[Detections]) -> None:
        """Add the counts of a batch of images.

        Args:
            preds: one predicted detection table per image.
            targets: one ground-truth table per image.
        """
        if len(preds) != len(targets):
            raise ValueError(f"got {len(preds)} prediction tables for {len(targets)} targets")
        for pred, gt in zip(preds, targets, strict=True):
            counts = xview3_counts(
                _to_numpy(pred),
                _to_numpy(gt),
                match_distance=self.match_distance,
                shore_distance_km=self.shore_distance_km,
            )
            for name, value in counts.as_dict().items():
                setattr(self, name, getattr(self, name) + value)

    def counts(self) -> XView3Counts:
        """The accumulated counts."""
        return XView3Counts(**{f.name: float(getattr(self, f.name)) for f in fields(XView3Counts)})

    def compute(self) -> dict[str, Tensor]:
        """Components and aggregate of everything seen since the last reset."""
        return {k: torch.tensor(v) for k, v in self.counts().scores().items()}


def _to_numpy(table: Detections) -> Detections:
    if hasattr(table, "columns"):  # a DataFrame
        return table
    return {
        k: (v.detach().cpu().numpy() if isinstance(v, Tensor) else np.asarray(v))
        for k, v in table.items()
    }
