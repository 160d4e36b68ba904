"""The one safe checkpoint reader: safetensors, or ``torch.load(weights_only=True)``.

Nothing here ever unpickles arbitrary Python objects: a file that needs it is refused, and
every failure is a :class:`CheckpointError` whose message is one line naming the file, what is
wrong and what to do. Third-party text (torch's multi-line ``weights_only`` explanation,
safetensors' ``Error while deserializing header``, JSON parse errors) is reduced to a short
reason inside that line.

.. versionadded:: 0.2
"""

from __future__ import annotations

import json
import os
import pickle
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

__all__ = ["Checkpoint", "CheckpointError", "read_checkpoint", "read_safetensors_json"]

#: Suffixes read as safetensors (everything else goes through ``torch.load``).
SAFETENSORS_SUFFIXES = frozenset({".safetensors"})


class CheckpointError(ValueError, RuntimeError):
    """A checkpoint cannot be read safely, or does not hold what the caller needs.

    Subclasses both ``ValueError`` and ``RuntimeError`` so that code written against either of
    the two earlier ``CheckpointError`` classes (TorchGeo and MONAI adapters) keeps catching it.

    .. versionadded:: 0.2
    """


@dataclass
class Checkpoint:
    """What :func:`read_checkpoint` found in a file.

    Attributes:
        path: the file.
        payload: the whole object ``torch.load`` returned (plain types and tensors only), or
            for safetensors ``{"state_dict": tensors}``.
        metadata: safetensors header metadata (strings); empty for torch files.
    """

    path: Path
    payload: Any
    metadata: dict[str, str] = field(default_factory=dict)

    def state_dict(self, keys: tuple[str, ...] = ("state_dict", "model", "network")) -> dict:
        """The tensors by name: the payload itself, or its first mapping under ``keys``.

        Raises:
            CheckpointError: if no mapping of names to tensors is found.
        """
        obj = self.payload
        if isinstance(obj, Mapping) and not _all_tensors(obj):
            for key in keys:
                if isinstance(obj.get(key), Mapping):
                    obj = obj[key]
                    break
        if not isinstance(obj, Mapping) or not obj or not _all_tensors(obj):
            raise CheckpointError(
                f"{self.path}: holds no state dict (expected a mapping of tensor names to "
                f"tensors, or one under {' / '.join(map(repr, keys))})"
            )
        return dict(obj)

    def get(self, key: str, default: Any = None) -> Any:
        """``payload[key]`` when the payload is a mapping, else ``default``."""
        return self.payload.get(key, default) if isinstance(self.payload, Mapping) else default


def _all_tensors(obj: Mapping) -> bool:
    return all(isinstance(v, Tensor) for v in obj.values())


def _first_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) if str(err).strip() else type(err).__name__
    return text[:200]


def _refusal_reason(err: BaseException) -> str:
    """The useful part of torch's weights_only refusal (it is eight lines of advice)."""
    text = str(err)
    m = re.search(r"(Unsupported (?:global|operand)[^\n]*)", text)
    if m:
        return m.group(1).strip()
    m = re.search(r"WeightsUnpickler error:\s*([^\n]+)", text)
    return m.group(1).strip() if m else _first_line(err)


def read_checkpoint(path: str | os.PathLike[str], *, what: str = "checkpoint") -> Checkpoint:
    """Read a checkpoint file without unpickling anything but tensors and plain values.

    Args:
        path: ``.safetensors`` file, or a torch file (``.pt``, ``.pth``, ``.ckpt``, ``.bin``).
        what: what the file is, for messages (``"checkpoint"``, ``"weights file"``).

    Returns:
        The :class:`Checkpoint`.

    Raises:
        FileNotFoundError: if ``path`` is not a file (one line naming it).
        CheckpointError: if the file is damaged, not a checkpoint, or needs unpickling of
            Python objects (refused without running anything).
    """
    p = Path(path).expanduser()
    if not p.is_file():
        kind = "a folder, not a file" if p.is_dir() else "no such file"
        raise FileNotFoundError(f"{p}: {what} not found ({kind})")
    if p.suffix.lower() in SAFETENSORS_SUFFIXES:
        return _read_safetensors(p, what)
    try:
        with warnings.catch_warnings():  # torch warns (on stderr) about pickle protocols
            warnings.simplefilter("ignore")
            payload = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"{p}: torch.load(weights_only=True) refused the file ({_refusal_reason(err)}): it "
            "holds Python objects, and xt-plugins never unpickles them (an untrusted pickle can "
            "run code); re-save only tensors and plain values, or a .safetensors file"
        ) from None
    except Exception as err:  # zip / EOF / format errors of damaged or foreign files
        raise CheckpointError(
            f"{p}: cannot be read as a torch {what} ({_first_line(err)}); the file is damaged "
            "or not a checkpoint: save it again (torch.save or .safetensors)"
        ) from None
    return Checkpoint(p, payload)


def _read_safetensors(p: Path, what: str) -> Checkpoint:
    from safetensors import safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(str(p), framework="pt") as f:
            metadata = dict(f.metadata() or {})
        tensors = load_file(str(p))
    except Exception as err:  # SafetensorError: truncated header, bad offsets, ...
        reason = _first_line(err).removeprefix("Error while deserializing header: ")
        raise CheckpointError(
            f"{p}: not a readable safetensors {what} ({reason}); the file is truncated or "
            "damaged: copy or save it again"
        ) from None
    return Checkpoint(p, {"state_dict": tensors}, metadata)


def read_safetensors_json(checkpoint: Checkpoint, key: str) -> Any:
    """Decode the JSON stored under ``key`` in a safetensors header (None when absent).

    Raises:
        CheckpointError: if the value is not valid JSON (one line naming the file and key).
    """
    text = checkpoint.metadata.get(key)
    if text is None:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise CheckpointError(
            f"{checkpoint.path}: the safetensors metadata {key!r} is not valid JSON "
            f"({err.msg} at character {err.pos}); save the checkpoint again"
        ) from None
