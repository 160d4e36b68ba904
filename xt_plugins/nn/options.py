"""The xT options: one list of names, defaults and docs for every entry point.

:func:`xt_plugins.create_model`, :class:`~xt_plugins.monai.XTNet`, the TorchGeo tasks and the
command line all take these options under these names; their docstrings point here instead of
repeating the list.

.. versionadded:: 0.2
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "MODEL_OPTIONS",
    "RUNTIME_OPTIONS",
    "XT_OPTIONS",
    "Option",
    "options_doc",
    "split_options",
]


@dataclass(frozen=True)
class Option:
    """One xT option.

    Attributes:
        name: keyword name.
        default: default value.
        doc: one-line description.
        runtime: True when the option sets memory / speed only (weights and outputs do not
            depend on it, so a checkpoint trained with one setting loads under any other).
    """

    name: str
    default: Any
    doc: str
    runtime: bool = False


_ALL: tuple[Option, ...] = (
    Option("region_size", 256, "region side in pixels."),
    Option(
        "context_pool",
        None,
        "pool each region to ``k x k`` context tokens (None: every last-stage token).",
    ),
    Option("context_dim", None, "width of the context encoder (None: the last stage's channels)."),
    Option(
        "context_kwargs",
        None,
        "options of the context encoder (``depth``, ``segment_len``, ``d_state``, ...).",
    ),
    Option("drop_rate", 0.0, "dropout before the classifier."),
    Option(
        "global_pool",
        "avg",
        "``avg`` (mean over valid tokens) or ``''`` (``forward`` returns the unpooled map).",
    ),
    Option("region_chunk", None, "encode at most this many regions at a time (None: all).", True),
    Option(
        "grad_ratio",
        1.0,
        "in training, the fraction of regions whose region-encoder pass keeps gradients.",
        True,
    ),
    Option(
        "checkpoint_regions",
        False,
        "recompute region-encoder activations in the backward pass (per chunk).",
        True,
    ),
    Option(
        "checkpoint_context",
        False,
        "recompute the context encoder's activations in the backward pass, layer by layer.",
        True,
    ),
)

#: Every xT option by name (the order is the documentation order).
XT_OPTIONS: dict[str, Option] = {o.name: o for o in _ALL}
#: Options that :class:`~xt_plugins.nn.XTModel` takes as keywords (all but ``region_size``,
#: which belongs to the region encoder).
MODEL_OPTIONS: frozenset[str] = frozenset(XT_OPTIONS) - {"region_size"}
#: Options that set memory / speed only: the weights and the outputs do not depend on them.
RUNTIME_OPTIONS: frozenset[str] = frozenset(o.name for o in _ALL if o.runtime)


def split_options(kwargs: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split keyword arguments into xT model options and the rest (backbone options).

    Args:
        kwargs: mixed keyword arguments.

    Returns:
        ``(model_options, other)``: the :data:`MODEL_OPTIONS` found, and everything else
        (``timm.create_model`` options of the region encoder, e.g. ``embed_dim``).
    """
    model = {k: v for k, v in kwargs.items() if k in MODEL_OPTIONS}
    other = {k: v for k, v in kwargs.items() if k not in MODEL_OPTIONS}
    return model, other


def options_doc(names: tuple[str, ...] | None = None, indent: int = 8) -> str:
    """Google-style ``Args:`` lines for the named options (default: all)."""
    pad = " " * indent
    return "\n".join(
        f"{pad}{XT_OPTIONS[n].name}: {XT_OPTIONS[n].doc}" for n in (names or tuple(XT_OPTIONS))
    )
