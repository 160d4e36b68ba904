"""TorchGeo tasks with xT models: classification, segmentation and xView3 vessel detection.

``XTClassification`` and ``XTSemanticSegmentation`` are TorchGeo's own tasks whose
``configure_models`` builds an xT model. They take every TorchGeo argument (forwarded to
TorchGeo's ``__init__``, so ``torchgeo fit --print_config`` lists them all) plus the xT
options of :class:`XTTaskOptions`, declared once for the three tasks. ``XTVesselDetection``
is xView3-style point detection: a dense decoder over xT's feature pyramid with
centre-heatmap, vessel, fishing and length heads (:class:`~xt_plugins.nn.heads.PointDetector`),
CenterNet losses, and the xView3 score as validation metric.

``weights`` follows TorchGeo: ``True`` (the region encoder's timm weights), a TorchGeo
``WeightsEnum`` member or its name (loaded into the region encoder; its backbone must be the
region encoder's, its ``in_chans`` are adapted), or the path of a Lightning checkpoint.

The optimizers exempt Mamba's ``A_log`` / ``D``, biases, norms, positional projections and
class tokens from weight decay (:meth:`~xt_plugins.nn.XTModel.no_weight_decay`).

The stock tasks need nothing from here: ``Classification(model="xt_swinv2_tiny_mamba")`` and
``SemanticSegmentation(backbone="tu-xt_swinv2_tiny_txl")`` work once ``xt_plugins`` is
imported (``xt-plugins torchgeo fit`` imports it for any config).

.. versionadded:: 0.1
"""

from __future__ import annotations

from typing import Any, Literal

import segmentation_models_pytorch as smp
from torchgeo.tasks import Classification, SemanticSegmentation

import xt_plugins  # noqa: F401 (registers the xt_* names with timm)

from ..nn.heads import (
    decode_detections,
    ground_truth_detections,
)
from .detection import XTVesselDetection
from .weights import as_weights_enum, load_task_weights
from .xt_task import TASK_OPTIONS, XTTaskOptions, xt_model_kwargs, xt_model_name

__all__ = [
    "XTClassification",
    "XTSemanticSegmentation",
    "XTTaskOptions",
    "XTVesselDetection",
    "TASK_OPTIONS",
    "decode_detections",
    "ground_truth_detections",
    "load_task_weights",
    "xt_model_kwargs",
    "xt_model_name",
]

#: smp architectures that take an xT encoder (``tu-xt_...``) with extra encoder options.
SMP_ARCHITECTURES: dict[str, str] = {
    "unet": "Unet",
    "fpn": "FPN",
    "upernet": "UPerNet",
    "segformer": "Segformer",
}


class XTClassification(XTTaskOptions, Classification):
    """TorchGeo image classification with an xT model (``xt_<backbone>_<context>``).

    Takes every argument of ``torchgeo.tasks.Classification`` (forwarded; only the defaults
    below differ) and the xT options of :class:`XTTaskOptions`.

    Args:
        model: ``xt_<backbone>_<context>``: a registered xT name, or any timm model as the
            region encoder (``xt_resnet50_mamba`` for TorchGeo's ResNet-50 weights).
        in_channels: input channels (2 for VV + VH).
        task: ``binary``, ``multiclass`` or ``multilabel``.
        loss: ``ce``, ``bce``, ``jaccard``, ``focal`` or ``dice``.
        lr: learning rate.
        **kwargs: the other arguments of ``Classification`` (``weights``, ``num_classes``,
            ``freeze_backbone``, ...) and of :class:`XTTaskOptions`.

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        model: str = "xt_swinv2_tiny_mamba",
        in_channels: int = 2,
        task: Literal["binary", "multiclass", "multilabel"] = "binary",
        loss: Literal["ce", "bce", "jaccard", "focal", "dice"] = "bce",
        lr: float = 1e-4,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            model=model, in_channels=in_channels, task=task, loss=loss, lr=lr, **kwargs
        )

    def configure_models(self) -> None:
        """Build the xT classifier."""
        hp = self.hparams
        self.model = self.create_xt_model(hp["model"], hp["num_classes"] or hp["num_labels"] or 1)
        if hp["freeze_backbone"]:
            for param in self.model.parameters():
                param.requires_grad = False
            for param in self.model.get_classifier().parameters():
                param.requires_grad = True


class XTSemanticSegmentation(XTTaskOptions, SemanticSegmentation):
    """TorchGeo semantic segmentation: an smp decoder on an xT encoder (``tu-xt_...``).

    Takes every argument of ``torchgeo.tasks.SemanticSegmentation`` (forwarded; only the
    defaults below differ) and the xT options of :class:`XTTaskOptions`.

    Args:
        model: smp architecture: ``unet``, ``fpn``, ``upernet`` or ``segformer``.
        backbone: registered xT model name (with or without ``tu-``).
        in_channels: input channels.
        num_classes: classes (multiclass).
        lr: learning rate.
        **kwargs: the other arguments of ``SemanticSegmentation`` (``weights``, ``task``,
            ``loss``, ``freeze_backbone``, ``freeze_decoder``, ...) and of
            :class:`XTTaskOptions`.

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        model: Literal["unet", "fpn", "upernet", "segformer"] = "unet",
        backbone: str = "xt_swinv2_tiny_txl",
        in_channels: int = 2,
        num_classes: int | None = 3,
        lr: float = 1e-4,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            model=model,
            backbone=backbone,
            in_channels=in_channels,
            num_classes=num_classes,
            lr=lr,
            **kwargs,
        )

    def configure_models(self) -> None:
        """Build the smp model on the xT encoder."""
        hp = self.hparams
        arch = SMP_ARCHITECTURES.get(hp["model"])
        if arch is None:
            raise ValueError(
                f"model {hp['model']!r} is not supported with an xT encoder; use one of "
                f"{sorted(SMP_ARCHITECTURES)}"
            )
        self.model = getattr(smp, arch)(
            encoder_name="tu-" + xt_model_name(hp["backbone"], hp["context"]),
            encoder_weights="imagenet" if self.weights is True else None,
            in_channels=hp["in_channels"],
            classes=hp["num_classes"] or hp["num_labels"] or 1,
            **xt_model_kwargs(hp),
        )
        enum = as_weights_enum(self.weights)
        load_task_weights(self.model if enum else self.model.encoder, self.weights, hp["backbone"])
        parts = ((self.model.encoder, "freeze_backbone"), (self.model.decoder, "freeze_decoder"))
        for part, flag in parts:
            if hp[flag]:
                for param in part.parameters():
                    param.requires_grad = False
