"""TorchGeo integration: xT tasks, a region-aligned sampler, SAR scenes and xView3 metrics.

Importing this package is cheap: it only lists the xT models in TorchGeo's model registry
(:func:`register_torchgeo_models`, lazily: nothing of TorchGeo is imported here). The classes
below load their modules on first access.

- tasks: :class:`XTClassification`, :class:`XTSemanticSegmentation`,
  :class:`XTVesselDetection`;
- data: :class:`NestedRegionGeoSampler`, :class:`SARScene`, :class:`SARSceneDataset`,
  :class:`SARSceneDataModule`;
- metrics: :func:`xview3_score`, :class:`XView3Metric`.

.. versionadded:: 0.1
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings
from collections.abc import Callable
from types import ModuleType
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

#: The TorchGeo module whose private ``_model`` dict backs ``list_models`` / ``get_model``.
_API = "torchgeo.models.api"


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


# ---------------------------------------------------------------------------- registry
def _builder(name: str) -> Callable[..., Any]:
    def build(weights: Any = None, *args: Any, **kwargs: Any) -> Any:
        if weights not in (None, False):
            raise ValueError(
                f"{name} has no TorchGeo weights; pass pretrained=True for the region "
                "encoder's timm weights, or load a state dict"
            )
        import timm

        return timm.create_model(name, *args, **kwargs)

    build.__name__ = build.__qualname__ = name
    build.__doc__ = f"xT model {name} through timm (see :func:`xt_plugins.create_model`)."
    return build


def _add_models(api: ModuleType) -> int:
    """Add every xT name to TorchGeo's registry dict; returns how many were added."""
    registry = getattr(api, "_model", None)
    if not isinstance(registry, dict):
        warnings.warn(
            f"{_API}._model is not a dict in this TorchGeo version: xT models are not listed "
            "in torchgeo.models.list_models() (timm names still work)",
            stacklevel=3,
        )
        return 0
    from ..models import model_names

    added = 0
    for name in model_names():
        if name not in registry:
            registry[name] = _builder(name)
            added += 1
    return added


class _RegisteringLoader(importlib.abc.Loader):
    """Wraps the loader of ``torchgeo.models.api``: registers right after the module runs."""

    def __init__(self, loader: importlib.abc.Loader) -> None:
        self._loader = loader

    def create_module(self, spec: Any) -> ModuleType | None:
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._loader.exec_module(module)
        try:
            _add_models(module)
        except Exception as e:  # never break TorchGeo's import
            warnings.warn(f"xt-plugins: could not list xT models in TorchGeo: {e}", stacklevel=2)

    def __getattr__(self, name: str) -> Any:  # get_source, get_resource_reader, ...
        return getattr(self._loader, name)


class _TorchGeoHook(importlib.abc.MetaPathFinder):
    """Finds ``torchgeo.models.api`` through the other finders and wraps its loader."""

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname != _API:
            return None
        sys.meta_path[:] = [f for f in sys.meta_path if f is not self]  # one shot
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        spec.loader = _RegisteringLoader(spec.loader)
        return spec


def register_torchgeo_models() -> bool:
    """List the ``xt_*`` models in TorchGeo's ``list_models()`` / ``get_model()``.

    If ``torchgeo.models`` is already imported, the names are added now; otherwise a one-shot
    import hook adds them right after TorchGeo imports its registry, so importing
    ``xt_plugins`` never pulls in ``torchgeo.models`` (several seconds). Idempotent; never
    raises (a TorchGeo change only costs the listing, with a warning).

    Returns:
        True when the names are or will be listed, False when TorchGeo is not installed.

    .. versionadded:: 0.1
    """
    try:
        api = sys.modules.get(_API)
        if api is not None:
            _add_models(api)
            return True
        if importlib.util.find_spec("torchgeo") is None:
            return False
        if not any(isinstance(f, _TorchGeoHook) for f in sys.meta_path):
            sys.meta_path.insert(0, _TorchGeoHook())
        return True
    except Exception as e:  # pragma: no cover (defensive)
        warnings.warn(f"xt-plugins: could not list xT models in TorchGeo: {e}", stacklevel=2)
        return False


register_torchgeo_models()
