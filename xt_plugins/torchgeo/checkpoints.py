"""Tasks from Lightning checkpoints: read safely, the task class found, the weights loaded.

.. versionadded:: 0.2
   Split out of ``xt_plugins.torchgeo.predict`` (still importable there).
"""

from __future__ import annotations

import inspect
import os
from typing import Any

import torch
from torch import nn

from xt_plugins.io.checkpoints import CheckpointError, read_checkpoint
from xt_plugins.nn import XTModel

__all__ = ["CheckpointError", "load_checkpoint", "task_from_checkpoint", "task_kind", "xt_model"]


def load_checkpoint(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``state_dict`` and ``hyper_parameters`` of a Lightning checkpoint, read safely.

    Args:
        path: ``.ckpt`` file written by Lightning (``torchgeo fit``).

    Returns:
        ``(state_dict, hyper_parameters)``.

    Raises:
        FileNotFoundError: if the file does not exist.
        CheckpointError: if the file is refused (it needs unpickling), damaged, or lacks a
            state dict or hyperparameters (one line naming the file).
    """
    ckpt = read_checkpoint(path)
    if not isinstance(ckpt.get("state_dict"), dict):
        raise CheckpointError(f"{ckpt.path}: not a Lightning checkpoint (no 'state_dict')")
    hparams = ckpt.get("hyper_parameters")
    if not isinstance(hparams, dict) or not hparams:
        raise CheckpointError(
            f"{ckpt.path}: no 'hyper_parameters'; the task cannot be rebuilt (train with "
            "torchgeo fit, or save_hyperparameters() in the task)"
        )
    return ckpt.state_dict(), dict(hparams)


def _task_classes() -> dict[str, type]:
    from torchgeo.tasks import Classification, SemanticSegmentation

    from .tasks import XTClassification, XTSemanticSegmentation, XTVesselDetection

    classes: dict[str, type] = {}
    for cls in (
        XTVesselDetection,
        XTSemanticSegmentation,
        XTClassification,
        SemanticSegmentation,
        Classification,
    ):
        for name in (cls.__name__, f"{cls.__module__}.{cls.__name__}"):
            classes[name] = cls
    classes["xt_plugins.torchgeo.XTVesselDetection"] = XTVesselDetection
    classes["xt_plugins.torchgeo.XTClassification"] = XTClassification
    classes["xt_plugins.torchgeo.XTSemanticSegmentation"] = XTSemanticSegmentation
    classes["torchgeo.tasks.Classification"] = Classification
    classes["torchgeo.tasks.SemanticSegmentation"] = SemanticSegmentation
    classes["torchgeo.trainers.ClassificationTask"] = Classification
    classes["torchgeo.trainers.SemanticSegmentationTask"] = SemanticSegmentation
    return classes


def _guess_task_class(hparams: dict[str, Any]) -> str:
    if "_class_path" in hparams:
        return str(hparams["_class_path"])
    if "out_stride" in hparams and "decoder_channels" in hparams:
        return "XTVesselDetection"
    xt = "region_size" in hparams
    if "backbone" in hparams:
        return "XTSemanticSegmentation" if xt else "SemanticSegmentation"
    return "XTClassification" if xt else "Classification"


def task_from_checkpoint(path: str | os.PathLike[str], device: str | None = None) -> nn.Module:
    """Rebuild a task (one of xt-plugins' or TorchGeo's classification / segmentation tasks).

    Args:
        path: Lightning checkpoint.
        device: where to put the model (default: CUDA when available, else CPU).

    Returns:
        The task in eval mode with the checkpoint's weights.

    Raises:
        CheckpointError: for an unsafe or unknown checkpoint, or weights that do not fit.
    """
    state, hparams = load_checkpoint(path)
    name = _guess_task_class(hparams)
    classes = _task_classes()
    cls = classes.get(name)
    if cls is None:
        raise CheckpointError(
            f"{path}: task {name!r} is not supported by predict-scene; supported: "
            "XTVesselDetection, XTSemanticSegmentation, XTClassification and TorchGeo's "
            "Classification / SemanticSegmentation with xT models"
        )
    params = _init_parameters(cls)
    kwargs = {k: v for k, v in hparams.items() if k in params and k != "weights"}
    task = cls(**kwargs)
    try:
        missing, unexpected = task.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shape mismatches: torch lists every one, on many lines
        first = str(err).strip().splitlines()[-1].strip()
        raise CheckpointError(f"{path}: weights do not fit {cls.__name__} ({first} ...)") from None
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: weights do not fit {cls.__name__}({', '.join(sorted(kwargs))}): "
            f"missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return task.to(device).eval()


def _init_parameters(cls: type) -> set[str]:
    """Keyword arguments ``cls(...)`` takes, following ``**kwargs`` forwarded to bases."""
    names: set[str] = set()
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        params = inspect.signature(init).parameters.values()
        names |= {p.name for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            break
    return names - {"self"}


def xt_model(module: nn.Module) -> XTModel:
    """The :class:`XTModel` inside a task."""
    for m in module.modules():
        if isinstance(m, XTModel):
            return m
    raise CheckpointError(f"{type(module).__name__} holds no xT model")


def task_kind(task: nn.Module) -> str:
    """``detection``, ``segmentation`` or ``classification``."""
    from torchgeo.tasks import SemanticSegmentation

    from .tasks import XTVesselDetection

    if isinstance(task, XTVesselDetection):
        return "detection"
    if isinstance(task, SemanticSegmentation):
        return "segmentation"
    return "classification"
