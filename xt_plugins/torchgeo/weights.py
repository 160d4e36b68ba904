"""TorchGeo ``weights=`` for the xT tasks: ``True``, a ``WeightsEnum`` member or name, a path.

.. versionadded:: 0.2
"""

from __future__ import annotations

import os
import tempfile
import warnings
from typing import Any

import torch
from torch import nn
from torchgeo.tasks import utils as tg_utils
from torchvision.models._api import WeightsEnum

from ..nn.xt import XTModel

__all__ = ["as_weights_enum", "load_task_weights"]


def _xt_inside(model: nn.Module) -> XTModel:
    """The :class:`XTModel` inside a task's model (itself, an smp encoder, a detector)."""
    found = next((m for m in model.modules() if isinstance(m, XTModel)), None)
    if found is None:
        raise TypeError(f"{type(model).__name__} holds no XTModel")
    return found


def as_weights_enum(weights: Any) -> WeightsEnum | None:
    """``weights`` as a TorchGeo ``WeightsEnum`` member (also from its name), else None."""
    if isinstance(weights, WeightsEnum):
        return weights
    if isinstance(weights, str) and not os.path.exists(weights) and "." in weights:
        from torchgeo.models import get_weight

        try:
            return get_weight(weights)
        except (KeyError, ValueError):
            return None
    return None


def _normalisation(transforms: Any) -> tuple[list[float], list[float]] | None:
    """Mean and std of the first ``Normalize`` in a weights' transforms (kornia or torch)."""
    modules = transforms.modules() if isinstance(transforms, nn.Module) else []
    for m in modules:
        flags = getattr(m, "flags", {})
        mean, std = flags.get("mean", getattr(m, "mean", None)), flags.get("std", None)
        std = getattr(m, "std", None) if std is None else std
        if type(m).__name__ == "Normalize" and mean is not None and std is not None:
            as_list = lambda v: torch.as_tensor(v).flatten().tolist()  # noqa: E731
            return as_list(mean), as_list(std)
    return None


def load_task_weights(model: nn.Module, weights: Any, model_name: str) -> None:
    """Load TorchGeo-style ``weights`` into a task's model.

    Args:
        model: the task's model (an :class:`XTModel`, an smp model on an xT encoder, or a
            detector around one).
        weights: None / False (random), True (already loaded by timm), a ``WeightsEnum``
            member or its name (``"ResNet50_Weights.SENTINEL1_ALL_MOCO"``: loaded into the
            region encoder; the mean / std of its transforms' ``Normalize`` become the region
            encoder's ``mean`` / ``std`` and the ``pretrained_cfg``'s), or a Lightning
            checkpoint / state-dict path.
        model_name: the task's model name (for error messages).

    Raises:
        ValueError: if the weights are for another backbone than the region encoder, or
            ``weights`` is neither of the above.

    .. versionadded:: 0.2
    """
    if not weights or weights is True:
        return
    enum = as_weights_enum(weights)
    if enum is not None:
        _load_weights_enum(_xt_inside(model), enum, model_name)
        return
    if not isinstance(weights, str | os.PathLike) or not os.path.exists(weights):
        raise ValueError(
            f"weights={weights!r}: xT tasks take True (timm weights of the region encoder), "
            "a TorchGeo WeightsEnum member or name, or the path of a saved checkpoint"
        )
    _, state_dict = tg_utils.extract_backbone(str(weights))
    tg_utils.load_state_dict(model, state_dict)


def _load_weights_enum(xt: XTModel, weights: WeightsEnum, model_name: str) -> None:
    from ..nn import load_region_weights

    meta = dict(weights.meta)
    ours = xt.region_encoder.backbone_name
    theirs = meta.get("model")
    if theirs is not None and str(theirs).partition(".")[0] != ours.partition(".")[0]:
        raise ValueError(
            f"weights {weights!r} are for a {theirs!r} backbone but {model_name!r} has the "
            f"region encoder {ours!r}; pick an xT model whose region encoder is {theirs!r}"
        )
    in_chans = meta.get("in_chans")
    if in_chans is not None and in_chans != xt.in_chans:
        warnings.warn(
            f"weights {weights!r} have {in_chans} input channels, the model {xt.in_chans}: "
            "the stem is adapted (timm's adapt_input_conv)",
            stacklevel=3,
        )
    state = weights.get_state_dict(progress=False, weights_only=True)
    from safetensors.torch import save_file

    with tempfile.TemporaryDirectory() as tmp:  # the region loader reads files
        path = os.path.join(tmp, "weights.safetensors")
        save_file({k: v.contiguous() for k, v in state.items()}, path)
        load_region_weights(xt.region_encoder.backbone, path)
    stats = _normalisation(weights.transforms)
    if stats is not None:  # the input statistics the weights were trained with, per band
        mean, std = (tuple(v * xt.in_chans if len(v) == 1 else v) for v in stats)
        encoder = xt.region_encoder
        if hasattr(encoder, "mean"):
            encoder.mean, encoder.std = mean, std
        for holder in (encoder, xt):
            if isinstance(getattr(holder, "pretrained_cfg", None), dict):
                holder.pretrained_cfg = {**holder.pretrained_cfg, "mean": mean, "std": std}
