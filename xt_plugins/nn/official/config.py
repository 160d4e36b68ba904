"""Official xT configs: parsing the released configs and YAML files, and the release table.

An official config (the fixtures' ``official_config`` layout, or an official YAML file) becomes
the :class:`~xt_plugins.nn.official.OfficialXT` arguments; :data:`OFFICIAL_RELEASES` lists the
released checkpoints behind the timm tags ``xt_<swin>_<head>.inat_reptilia_<size>``.

.. versionadded:: 0.2
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "HF_HUB_ID",
    "OFFICIAL_BACKBONES",
    "OFFICIAL_RELEASES",
    "OfficialCheckpointError",
    "OfficialRelease",
    "official_model_kwargs",
    "parse_official_config",
]

#: Hugging Face repository of the released checkpoints.
HF_HUB_ID = "bair-climate-initiative/xt"
#: Official ``backbone_class`` -> the timm model it builds (``xt/models/backbones/swin.py``).
OFFICIAL_BACKBONES: dict[str, str] = {
    "swinv2_tiny_window16_256_timm": "swinv2_tiny_window16_256",
    "swinv2_small_window16_256_timm": "swinv2_small_window16_256",
    "swinv2_base_window16_256_timm": "swinv2_base_window16_256",
    "swinv2_large_window16_256_timm": "swinv2_large_window12to16_192to256",
}
#: What an official config leaves out: ``ModelConfig`` / ``ContextEncoderConfig`` dataclass
#: defaults (``xt/models/build.py``, ``xt/models/context_encoders/__init__.py``), overlaid with
#: ``config/base.yaml``'s ``model`` section (``input_size: 512``, ``cls_head: naive``).
_DEFAULTS: dict[str, Any] = {
    "backbone_class": "swinv2_tiny_window16_256_timm",
    "backbone_kwargs": {},
    "region_size": 512,
    "num_classes": 9999,
    "cls_head": "naive",
    "mlp_ratio": 4,
    "context": {
        "n_layer": 12,
        "hidden_size": 768,
        "attention_method": "hyper",
        "in_context_patches": -1,
    },
}


class OfficialCheckpointError(RuntimeError):
    """An official xT checkpoint cannot be read or does not fit the model."""


def _resolve_refs(node: Any, root: Mapping[str, Any]) -> Any:
    """Resolve OmegaConf-style ``${a.b}`` references (whole-string ones) against ``root``."""
    if isinstance(node, Mapping):
        return {k: _resolve_refs(v, root) for k, v in node.items()}
    if isinstance(node, list):
        return [_resolve_refs(v, root) for v in node]
    if isinstance(node, str):
        m = re.fullmatch(r"\$\{([A-Za-z_][\w.]*)\}", node.strip())
        if m:
            value: Any = root
            for part in m.group(1).split("."):
                if not isinstance(value, Mapping) or part not in value:
                    return node
                value = value[part]
            return _resolve_refs(value, root)
    return node


def _from_yaml(path: Path) -> dict[str, Any]:
    import yaml

    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise OfficialCheckpointError(f"{path}: cannot read the official config ({err})") from err
    if not isinstance(doc, Mapping) or not isinstance(doc.get("model"), Mapping):
        raise OfficialCheckpointError(f"{path}: no 'model' section; pass an official xT config")
    model = _resolve_refs(doc, doc)["model"]
    backbone = model.get("backbone") or {}
    out: dict[str, Any] = {
        k: model[k]
        for k in ("backbone_class", "num_classes", "cls_head", "mlp_ratio")
        if k in model
    }
    if "input_size" in backbone:
        out["region_size"] = backbone["input_size"]
    data = doc.get("data") or {}
    if isinstance(data, Mapping) and isinstance(data.get("crop_size"), int):
        out["image_size"] = data["crop_size"]  # the training / evaluation image side
    out["context"] = dict(model.get("context") or {})
    return out


def parse_official_config(config: Mapping[str, Any] | str | Path) -> dict[str, Any]:
    """Normalise an official xT config to the fixture layout, defaults filled in.

    Args:
        config: a dict shaped like the fixtures' ``official_config`` (``backbone_class``,
            ``backbone_kwargs``, ``region_size``, ``num_classes``, ``cls_head``, ``mlp_ratio``,
            ``context: {n_layer, hidden_size, attention_method, in_context_patches}``), a dict
            holding one under ``official_config``, or the path of an official YAML config
            (``config/swin-t/swin_v2_tiny_1e-4_hyper_512_256.yaml``; ``${data.num_classes}``
            references are resolved, base configs are replaced by the official defaults, and
            ``data.crop_size`` is kept as ``image_size``).

    Returns:
        The config with every key set.

    Raises:
        OfficialCheckpointError: for an unreadable YAML file or one without a ``model`` section.
    """
    if isinstance(config, (str, Path)):
        config = _from_yaml(Path(config))
    if "official_config" in config:
        config = config["official_config"]
    out = {k: v for k, v in _DEFAULTS.items() if k != "context"}
    out.update({k: v for k, v in config.items() if k != "context"})
    out["backbone_kwargs"] = dict(out.get("backbone_kwargs") or {})
    context = dict(_DEFAULTS["context"])
    context.update(
        {k: v for k, v in (config.get("context") or {}).items() if k in _DEFAULTS["context"]}
    )
    out["context"] = context
    return out


def official_model_kwargs(config: Mapping[str, Any] | str | Path) -> dict[str, Any]:
    """The :class:`OfficialXT` arguments of an official config (:func:`parse_official_config`).

    Raises:
        ValueError: for a ``backbone_class`` this module does not know.
    """
    cfg = parse_official_config(config)
    name = cfg["backbone_class"]
    if name not in OFFICIAL_BACKBONES:
        raise ValueError(
            f"backbone_class {name!r} is not an official Swin-V2 xT backbone; "
            f"known: {sorted(OFFICIAL_BACKBONES)}"
        )
    ctx = cfg["context"]
    return dict(
        backbone=OFFICIAL_BACKBONES[name],
        region_size=int(cfg["region_size"]),
        num_classes=int(cfg["num_classes"]),
        cls_head=cfg["cls_head"],
        hidden_size=int(ctx["hidden_size"]),
        n_layer=int(ctx["n_layer"]),
        attention_method=ctx["attention_method"],
        in_context_patches=int(ctx["in_context_patches"]),
        mlp_ratio=int(cfg["mlp_ratio"]),
        **cfg["backbone_kwargs"],
    )


@dataclass(frozen=True)
class OfficialRelease:
    """One released checkpoint: where it lives and the official config it was trained with.

    Attributes:
        filename: path inside :data:`HF_HUB_ID`.
        backbone_class: official backbone.
        region_size: region side (the official ``backbone.input_size``).
        input_size: training and evaluation image side (``data.crop_size``).
        attention_method: ``hyper``, ``mamba`` or ``naive`` (for ``cls_head: naive``, unused).
        n_layer: context layers.
        cls_head: ``xl`` or ``naive``.
        top1: top-1 accuracy reported by the official README (iNaturalist 2018 Reptilia val).
    """

    filename: str
    backbone_class: str
    region_size: int
    input_size: int
    attention_method: str
    n_layer: int
    cls_head: str
    top1: float

    @property
    def config(self) -> dict[str, Any]:
        """The official config (fixture layout) of this release."""
        return {
            "backbone_class": self.backbone_class,
            "region_size": self.region_size,
            "num_classes": 284,
            "cls_head": self.cls_head,
            "mlp_ratio": 4,
            "context": {
                "n_layer": self.n_layer,
                "hidden_size": 768,
                "attention_method": self.attention_method,
                "in_context_patches": -1,
            },
        }


def _releases() -> dict[str, OfficialRelease]:
    # The official README's "Pretrained Models" table (files under bair-climate-initiative/xt);
    # the configs are config/swin-*/swin_v2_*_{hyper,mamba}_{512,256}_256.yaml (hidden 768,
    # 2 hyper / 4 mamba layers, in_context_patches -1). "XL" rows have no released file.
    swin = {"t": "tiny", "s": "small", "b": "base", "l": "large"}
    table = [
        ("t", "hyper", 512, 60.56),
        ("t", "mamba", 512, 61.97),
        ("s", "hyper", 512, 63.62),
        ("b", "hyper", 512, 64.08),
        ("b", "mamba", 512, 63.73),
        ("l", "hyper", 512, 72.42),
        ("l", "mamba", 512, 73.36),
        ("t", "hyper", 256, 52.93),
        ("s", "hyper", 256, 57.04),
        ("b", "hyper", 256, 55.52),
        ("l", "hyper", 256, 67.84),
    ]
    out = {}
    for s, head, size, top1 in table:
        out[f"xt_swinv2_{swin[s]}_{head}.inat_reptilia_{size}"] = OfficialRelease(
            filename=f"swin-{s}/weights/swin-{s}-{head}-{size}-256-top1.ckpt",
            backbone_class=f"swinv2_{swin[s]}_window16_256_timm",
            region_size=256,
            input_size=size,
            attention_method=head,
            n_layer=4 if head == "mamba" else 2,
            cls_head="xl",
            top1=top1,
        )
    return out


#: ``"<architecture>.<tag>"`` -> the released checkpoint behind that timm pretrained tag.
OFFICIAL_RELEASES: dict[str, OfficialRelease] = _releases()
