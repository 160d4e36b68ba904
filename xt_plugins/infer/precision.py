"""Mixed precision and flip test-time augmentation (TTA), one definition for every engine path.

- ``precision``: ``"32"`` (float32, the default), ``"bf16"`` (bfloat16 autocast, CPU or CUDA)
  or ``"16"`` (float16 autocast, CUDA only: CPU float16 autocast is slow and poorly covered,
  so it is refused with one line naming ``bf16``). Autocast covers the model pass that
  dominates the cost (the region encoder in streaming, the whole dense model in windows);
  outputs are cast back to float32 before anything is stored or summed.
- ``tta``: None (off) or ``"flips"``: the input is run as it is and flipped left-right,
  up-down and both; each output is flipped back and the four are averaged (4x the compute).
  Averaging over the whole flip group makes the result itself flip-consistent: TTA of a
  flipped input is the flipped TTA result.

.. versionadded:: 0.2
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "FLIPS",
    "PRECISIONS",
    "TTA_MODES",
    "autocast",
    "check_precision",
    "check_tta",
    "flip_tta",
    "run_model",
]

#: Accepted ``precision`` values (``--precision``).
PRECISIONS = ("32", "bf16", "16")
#: Accepted ``tta`` values (``--tta``); None is off.
TTA_MODES = ("flips",)
#: The flip group over (H, W): none, left-right, up-down, both (dims of an NCHW tensor).
FLIPS: tuple[tuple[int, ...], ...] = ((), (-1,), (-2,), (-2, -1))

_ALIASES = {"32": "32", "fp32": "32", "float32": "32", "32-true": "32",
            "bf16": "bf16", "bfloat16": "bf16", "bf16-mixed": "bf16",
            "16": "16", "fp16": "16", "float16": "16", "16-mixed": "16"}  # fmt: skip


def check_precision(precision: Any, device: torch.device | str | None = None) -> str:
    """The canonical precision name (``"32"``, ``"bf16"``, ``"16"``) for ``device``.

    Args:
        precision: ``32``, ``"32"``, ``"bf16"``, ``"16"`` (and Lightning-style spellings such as
            ``"bf16-mixed"``).
        device: where the model runs (None: no device check).

    Raises:
        ValueError: an unknown precision, or float16 on a CPU.
    """
    name = _ALIASES.get(str(precision).strip().lower())
    if name is None:
        raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
    if name == "16" and device is not None and torch.device(device).type != "cuda":
        raise ValueError(
            f"precision 16 (float16 autocast) needs a CUDA device, not {torch.device(device)}; "
            "use --precision bf16 (precision='bf16') on CPU, or 32"
        )
    return name


def check_tta(tta: Any) -> str | None:
    """The canonical TTA mode (None or ``"flips"``).

    Raises:
        ValueError: an unknown mode.
    """
    if tta is None or str(tta).strip().lower() in ("", "none", "off", "false"):
        return None
    name = str(tta).strip().lower()
    if name not in TTA_MODES:
        raise ValueError(f"tta must be None or one of {list(TTA_MODES)}, got {tta!r}")
    return name


@contextlib.contextmanager
def autocast(precision: str, device: torch.device | str) -> Iterator[None]:
    """``torch.autocast`` for ``precision`` on ``device``; float32 runs as it is."""
    name = check_precision(precision, device)
    if name == "32":
        yield
        return
    dtype = torch.bfloat16 if name == "bf16" else torch.float16
    with torch.autocast(device_type=torch.device(device).type, dtype=dtype):
        yield


def _flip(value: Any, dims: tuple[int, ...]) -> Any:
    """Flip every tensor of ``value`` (tensor, mapping, tuple or list) over ``dims``."""
    if not dims:
        return value
    if isinstance(value, Tensor):
        return value.flip(dims) if value.ndim >= 3 else value
    if isinstance(value, Mapping):
        return {k: _flip(v, dims) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return type(value)(_flip(v, dims) for v in value)
    return value


def _mean(values: list[Any]) -> Any:
    first = values[0]
    if isinstance(first, Tensor):
        return torch.stack([v.float() for v in values]).mean(dim=0)
    if isinstance(first, Mapping):
        return {k: _mean([v[k] for v in values]) for k in first}
    if isinstance(first, tuple | list):
        return type(first)(_mean(list(vs)) for vs in zip(*values, strict=True))
    return first


def flip_tta(fn: Callable[[Tensor], Any], x: Tensor) -> Any:
    """Average ``fn`` over the four flips of ``x`` (B, C, H, W), each output flipped back.

    ``fn``'s output may be a tensor or a mapping / tuple / list of tensors; tensors with at
    least 3 dims are taken as spatial maps (..., h, w) aligned with the input (any output
    stride that divides H and W) and flipped back; others (per-image values) are averaged as
    they are. Outputs come back as float32.
    """
    return _mean([_flip(fn(_flip(x, dims)), dims) for dims in FLIPS])


def run_model(fn: Callable[[Tensor], Any], x: Tensor, precision: str, tta: str | None) -> Any:
    """``fn(x)`` under ``precision``'s autocast, averaged over flips when ``tta == "flips"``."""
    with autocast(precision, x.device):
        return flip_tta(fn, x) if tta == "flips" else fn(x)
