"""The xT options of the TorchGeo tasks (declared once) and the xT model names they take.

.. versionadded:: 0.2
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import timm
import torch
from lightning.pytorch.core.mixins import HyperparametersMixin
from torch.optim import AdamW
from torch.optim.lr_scheduler import ReduceLROnPlateau

import xt_plugins  # noqa: F401 (registers the xt_* names with timm)

from ..models import create_model
from ..nn.context import CONTEXT_ENCODERS
from ..nn.optim import weight_decay_groups
from ..nn.options import XT_OPTIONS
from ..nn.xt import XTModel
from .weights import load_task_weights

__all__ = ["TASK_OPTIONS", "XTTaskOptions", "xt_model_kwargs", "xt_model_name"]

#: The xT options a task takes as its own arguments (the rest go through ``model_kwargs``).
TASK_OPTIONS: tuple[str, ...] = (
    "region_size",
    "context_pool",
    "grad_ratio",
    "region_chunk",
    "checkpoint_regions",
)
_D = {name: XT_OPTIONS[name].default for name in TASK_OPTIONS}


def xt_model_kwargs(hparams: Mapping[str, Any]) -> dict[str, Any]:
    """The xT options of a task's hyperparameters as ``timm.create_model`` kwargs."""
    kwargs: dict[str, Any] = {name: hparams[name] for name in TASK_OPTIONS}
    extra = dict(hparams.get("model_kwargs") or {})
    clash = sorted(set(extra) & (set(kwargs) | {"num_classes", "in_chans", "pretrained"}))
    if clash:
        raise ValueError(f"model_kwargs {clash} are task arguments; set them on the task instead")
    return {**kwargs, **extra}


def xt_model_name(name: str, context: str | None = None, *, registered: bool = True) -> str:
    """The xT name for ``name`` (``tu-`` stripped), its context replaced if given.

    Args:
        name: ``xt_<backbone>_<context>`` (or ``tu-xt_...``).
        context: a context encoder replacing the name's (None: keep it).
        registered: only timm-registered names (smp's ``tu-`` encoders need them); with
            False, ``xt_<any timm model>_<context>`` is accepted too (e.g. ``xt_resnet50_mamba``
            for TorchGeo's ResNet-50 weights), built by :func:`xt_plugins.create_model`.

    Raises:
        ValueError: if the result is not such a name.
    """
    bare = name.removeprefix("tu-")
    if context is not None:
        backbone = bare.removeprefix("xt_").rpartition("_")[0] or bare
        bare = f"xt_{backbone}_{context}"
    if bare in timm.list_models("xt_*"):
        return bare
    backbone, _, ctx = bare.removeprefix("xt_").rpartition("_")
    if not registered and bare.startswith("xt_") and ctx in CONTEXT_ENCODERS:
        if timm.is_model(backbone):
            return bare
    raise ValueError(
        f"{bare!r} is not a registered xT model; use xt_<backbone>_<context> "
        f"(`xt-plugins models` lists them), e.g. xt_swinv2_tiny_mamba"
        + ("" if registered else ", or xt_<timm model>_<context>")
    )


class XTTaskOptions(HyperparametersMixin):
    """The xT options of the TorchGeo tasks, declared once (a mixin placed before the task).

    Args:
        region_size: xT region side in pixels.
        context: context encoder (``none``, ``txl``, ``hyper``, ``mamba``) replacing the one
            in the model name (None: keep it).
        context_pool: pool each region to ``k x k`` context tokens (None: all tokens).
        grad_ratio: fraction of regions whose region-encoder pass keeps gradients.
        region_chunk: encode at most this many regions at a time.
        checkpoint_regions: activation checkpointing of the region encoder.
        model_kwargs: more options for :func:`xt_plugins.create_model` (``context_kwargs``,
            ``context_dim``, ``checkpoint_context``, ``drop_rate``, backbone options such as
            ``embed_dim``, ``depths``); see :data:`xt_plugins.nn.options.XT_OPTIONS`.
        **kwargs: the task's own arguments (forwarded).

    .. versionadded:: 0.2
    """

    def __init__(
        self,
        *,
        region_size: int = _D["region_size"],
        context: str | None = None,
        context_pool: int | None = _D["context_pool"],
        grad_ratio: float = _D["grad_ratio"],
        region_chunk: int | None = _D["region_chunk"],
        checkpoint_regions: bool = _D["checkpoint_regions"],
        model_kwargs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)

    def create_xt_model(self, name: str, num_classes: int) -> XTModel:
        """The task's xT model from its hyperparameters (``weights`` loaded).

        A registered name is built by ``timm.create_model``; ``xt_<timm model>_<context>``
        by :func:`xt_plugins.create_model` (the same model for registered names).
        """
        hp = self.hparams
        full = xt_model_name(name, hp["context"], registered=False)
        kwargs = dict(num_classes=num_classes, in_chans=hp["in_channels"], **xt_model_kwargs(hp))
        if full in timm.list_models("xt_*"):
            model = timm.create_model(full, pretrained=self.weights is True, **kwargs)
        else:
            backbone, _, context = full.removeprefix("xt_").rpartition("_")
            pretrained = True if self.weights is True else None
            model = create_model(backbone, context, pretrained_region=pretrained, **kwargs)
        load_task_weights(model, self.weights, name)
        return model

    def configure_optimizers(self) -> Any:
        """TorchGeo's AdamW + ReduceLROnPlateau, with no weight decay where it must not apply.

        Same optimizer, learning rate, weight decay (AdamW's default), scheduler and monitor
        as ``torchgeo.tasks.BaseTask.configure_optimizers``; the parameters come in two
        groups (:func:`xt_plugins.nn.optim.weight_decay_groups`).
        """
        weight_decay = AdamW([torch.zeros(1)]).defaults["weight_decay"]
        optimizer = AdamW(weight_decay_groups(self, weight_decay), lr=self.hparams["lr"])
        scheduler = ReduceLROnPlateau(optimizer, patience=self.hparams["patience"])
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "monitor": self.monitor},
        }
