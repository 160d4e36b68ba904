"""TorchGeo integration: xT tasks, a region-aligned sampler, SAR scenes and xView3 metrics.

Importing this package is cheap: the classes below load their modules on first access.

- tasks: :class:`XTClassification`, :class:`XTSemanticSegmentation`,
  :class:`XTVesselDetection`;
- data: :class:`NestedRegionGeoSampler`, :class:`SARScene`, :class:`SARSceneDataset`,
  :class:`SARSceneDataModule`;
- metrics: :func:`xview3_score`, :class:`XView3Metric`.

The xT models live in **timm's registry** (``import xt_plugins`` registers every
``xt_<backbone>_<context>`` name), which is what TorchGeo's stock tasks build from:
``Classification(model="xt_convnext_tiny_mamba")`` calls ``timm.create_model``, and
``SemanticSegmentation(backbone="tu-xt_convnext_tiny_txl")`` goes through smp's timm
encoders. TorchGeo's own ``torchgeo.models.list_models()`` registry (a private dict) is not
touched: ``timm.list_models("xt_*")`` or ``xt-plugins models`` lists the names. Under
``torchgeo fit`` with a stock config nothing imports ``xt_plugins``; run
``xt-plugins torchgeo fit --config ...`` (or ``python -m xt_plugins.torchgeo fit``), which is
TorchGeo's own command after ``import xt_plugins``.

.. versionadded:: 0.1
.. versionchanged:: 0.2
   No longer writes into TorchGeo's private model registry (an import hook did);
   ``register_torchgeo_models`` is a deprecated no-op.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "NestedRegionGeoSampler",
    "SARScene",
    "SARSceneDataModule",
    "SARSceneDataset",
    "SARSceneError",
    "XTClassification",
    "XTSemanticSegmentation",
    "XTVesselDetection",
    "XView3Metric",
    "register_torchgeo_models",
    "xview3_score",
]

_LAZY: dict[str, str] = {
    "NestedRegionGeoSampler": "samplers",
    "SARScene": "datamodules",
    "SARSceneDataModule": "datamodules",
    "SARSceneDataset": "datamodules",
    "SARSceneError": "datamodules",
    "XTClassification": "tasks",
    "XTSemanticSegmentation": "tasks",
    "XTVesselDetection": "tasks",
    "XView3Metric": "metrics",
    "xview3_score": "metrics",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


def register_torchgeo_models() -> bool:
    """Deprecated no-op: the xT models are listed in timm's registry, not TorchGeo's.

    ``import xt_plugins`` registers every ``xt_*`` name with timm, which TorchGeo's tasks
    build from; ``timm.list_models("xt_*")`` lists them.

    Returns:
        False (nothing is added to TorchGeo's private registry).

    .. deprecated:: 0.2
    """
    import warnings

    warnings.warn(
        "register_torchgeo_models() does nothing since xt-plugins 0.2: the xT models are in "
        "timm's registry (timm.list_models('xt_*')); remove the call",
        DeprecationWarning,
        stacklevel=2,
    )
    return False
