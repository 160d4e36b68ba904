"""xView3-style vessel detection as a TorchGeo task (point heads over the xT pyramid).

.. versionadded:: 0.1
.. versionchanged:: 0.2
   Moved from ``xt_plugins.torchgeo.tasks`` (still importable there).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torchgeo.tasks import BaseTask
from torchvision.models._api import WeightsEnum

from ..nn.heads import (
    PointDetector,
    decode_detections,
    ground_truth_detections,
    heatmap_focal_loss,
)
from .metrics import MATCH_DISTANCE_M, SHORE_DISTANCE_KM, XView3Metric
from .xt_task import XTTaskOptions

__all__ = ["XTVesselDetection"]


class XTVesselDetection(XTTaskOptions, BaseTask):
    """xView3-style vessel detection with an xT encoder and CenterNet-style point heads.

    Heads (at ``out_stride``): centre ``heatmap`` (penalty-reduced focal loss on Gaussian
    targets), ``vessel`` and ``fishing`` (BCE at labelled centres; fishing only for
    vessels) and ``length`` (L1 on log metres at vessels with a length). Validation / test
    log the loss parts and the xView3 components; ``val_xview3`` is the aggregate.

    Batches come from :class:`~xt_plugins.torchgeo.SARSceneDataModule` with
    ``task="detection"`` and ``target_stride == out_stride``.

    Args:
        model: ``xt_<backbone>_<context>`` (the encoder; its classifier is dropped): a
            registered xT name, or any timm model as the region encoder.
        weights: True for the region encoder's timm weights, a TorchGeo ``WeightsEnum``
            member or name, or a checkpoint path (see :func:`load_task_weights`).
        in_channels: input channels (VV, VH, ...).
        decoder_channels: width of the dense decoder and heads.
        out_stride: output stride, 4 or 2.
        heatmap_weight: weight of the heatmap loss.
        class_weight: weight of the vessel and fishing losses.
        length_weight: weight of the length loss.
        score_threshold: smallest centre probability of a detection.
        nms_kernel: peak-finding window in output cells.
        match_distance_m: xView3 match distance (metres).
        shore_distance_km: xView3 close-to-shore distance (km).
        lr: learning rate.
        patience: patience of the learning-rate scheduler.
        freeze_backbone: train only the decoder and heads.
        **kwargs: the xT options of :class:`XTTaskOptions` (``region_size``, ``context``,
            ``context_pool``, ``grad_ratio``, ``region_chunk``, ``checkpoint_regions``,
            ``model_kwargs``).

    .. versionadded:: 0.1
    """

    monitor = "val_loss"

    def __init__(
        self,
        model: str = "xt_swinv2_tiny_mamba",
        weights: WeightsEnum | str | bool | None = None,
        in_channels: int = 2,
        decoder_channels: int = 64,
        out_stride: int = 4,
        heatmap_weight: float = 1.0,
        class_weight: float = 1.0,
        length_weight: float = 0.5,
        score_threshold: float = 0.3,
        nms_kernel: int = 3,
        match_distance_m: float = MATCH_DISTANCE_M,
        shore_distance_km: float = SHORE_DISTANCE_KM,
        lr: float = 1e-4,
        patience: int = 10,
        freeze_backbone: bool = False,
        **kwargs: Any,
    ) -> None:
        self.weights = weights
        super().__init__(**kwargs)

    def configure_models(self) -> None:
        """Build the xT encoder, the dense decoder and the point heads."""
        hp = self.hparams
        encoder = self.create_xt_model(hp["model"], num_classes=0)
        self.model = PointDetector(
            encoder,
            decoder_channels=hp["decoder_channels"],
            out_stride=hp["out_stride"],
            init_bias={"length": math.log(60.0)},  # log metres of a typical vessel
        )
        if hp["freeze_backbone"]:
            for param in encoder.parameters():
                param.requires_grad = False

    def configure_metrics(self) -> None:
        """xView3 metrics for validation and test."""
        kw = dict(
            match_distance=self.hparams["match_distance_m"],
            shore_distance_km=self.hparams["shore_distance_km"],
        )
        self.val_metrics = XView3Metric(**kw)
        self.test_metrics = XView3Metric(**kw)

    def forward(self, x: Tensor) -> dict[str, Tensor]:  # type: ignore[override]
        """Raw dense outputs: name -> (B, 1, ceil(H / s), ceil(W / s))."""
        return self.model(x)

    # ------------------------------------------------------------------------ losses
    def compute_losses(
        self, out: Mapping[str, Tensor], batch: Mapping[str, Tensor]
    ) -> dict[str, Tensor]:
        """Loss parts and their weighted sum (``loss``).

        Raises:
            ValueError: if the targets are not on the outputs' grid (``target_stride`` of
                the data module differs from ``out_stride``).
        """
        heat_t = batch["heatmap"]
        if heat_t.shape[-2:] != out["heatmap"].shape[-2:]:
            raise ValueError(
                f"targets are {tuple(heat_t.shape[-2:])} cells but the detector outputs "
                f"{tuple(out['heatmap'].shape[-2:])}: set the data module's target_stride to "
                f"the task's out_stride ({self.hparams['out_stride']})"
            )
        losses = {"heatmap": heatmap_focal_loss(out["heatmap"], heat_t)}
        for key in ("vessel", "fishing"):
            pred, target = out[key][:, 0], batch[key]
            known = target >= 0
            losses[key] = (
                F.binary_cross_entropy_with_logits(pred[known], target[known].float())
                if known.any()
                else pred.sum() * 0.0  # keeps every head in the graph (DDP)
            )
        pred, target = out["length"][:, 0], batch["length"]
        known = target > 0
        losses["length"] = (
            F.l1_loss(pred[known], target[known].float().log()) if known.any() else pred.sum() * 0.0
        )
        hp = self.hparams
        losses["loss"] = (
            hp["heatmap_weight"] * losses["heatmap"]
            + hp["class_weight"] * (losses["vessel"] + losses["fishing"])
            + hp["length_weight"] * losses["length"]
        )
        return losses

    def _step(
        self, batch: Mapping[str, Tensor], split: str
    ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        out = self(batch["image"])
        losses = self.compute_losses(out, batch)
        b = batch["image"].shape[0]
        self.log(f"{split}_loss", losses["loss"], batch_size=b, sync_dist=split != "train")
        for key in ("heatmap", "vessel", "fishing", "length"):
            self.log(f"{split}_loss_{key}", losses[key], batch_size=b, sync_dist=split != "train")
        return out, losses

    def _pixel_size(self, batch: Mapping[str, Tensor]) -> Tensor:
        if "transform" in batch:
            return batch["transform"][:, 0].abs()
        return torch.ones(batch["image"].shape[0])

    def _update_metric(
        self, metric: XView3Metric, out: Mapping[str, Tensor], batch: Mapping[str, Tensor]
    ) -> None:
        hp = self.hparams
        ps = self._pixel_size(batch)
        preds = decode_detections(
            out, hp["out_stride"], ps, hp["score_threshold"], hp["nms_kernel"], batch.get("valid")
        )
        metric.update(preds, ground_truth_detections(batch, hp["out_stride"], ps))

    def training_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> Tensor:
        """One training step; returns the loss."""
        return self._step(batch, "train")[1]["loss"]

    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        """Validation loss and xView3 counts."""
        out, _ = self._step(batch, "val")
        self._update_metric(self.val_metrics, out, batch)

    def test_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        """Test loss and xView3 counts."""
        out, _ = self._step(batch, "test")
        self._update_metric(self.test_metrics, out, batch)

    def _log_metric(self, metric: XView3Metric, split: str) -> None:
        scores = metric.compute()
        self.log_dict(
            {
                f"{split}_{'xview3' if k == 'aggregate' else k}": v.float()
                for k, v in scores.items()
            },
            sync_dist=True,  # identical on every rank (the metric is synced); silences Lightning
        )
        metric.reset()

    def on_validation_epoch_end(self) -> None:
        """Log the xView3 components of the validation windows."""
        self._log_metric(self.val_metrics, "val")

    def on_test_epoch_end(self) -> None:
        """Log the xView3 components of the test windows."""
        self._log_metric(self.test_metrics, "test")

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> dict[str, Any]:
        """Probability maps and decoded detections of a batch."""
        out = self(batch["image"])
        hp = self.hparams
        return {
            "heatmap": out["heatmap"].sigmoid(),
            "vessel": out["vessel"].sigmoid(),
            "fishing": out["fishing"].sigmoid(),
            "length": out["length"].exp(),
            "detections": decode_detections(
                out,
                hp["out_stride"],
                self._pixel_size(batch),
                hp["score_threshold"],
                hp["nms_kernel"],
                batch.get("valid"),
            ),
            "transform": batch.get("transform"),
        }
