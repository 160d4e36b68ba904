"""Core commands: ``models`` (and later ``demo`` and ``bench``)."""

from __future__ import annotations

import argparse

__all__ = ["register"]


def register(sub: argparse._SubParsersAction) -> None:
    """Add the core commands to the ``xt-plugins`` parser."""
    p = sub.add_parser("models", help="list registered xT models and their size")
    p.add_argument("--filter", default="*", help="glob on model names (default: all)")
    p.set_defaults(func=_models)


def _models(args: argparse.Namespace) -> int:
    import fnmatch

    import torch

    import xt_plugins

    print(f"{'model':28s} {'region encoder':28s} {'context':8s} {'params (M)':>10s}")
    for name in xt_plugins.model_names():
        if not fnmatch.fnmatch(name, args.filter):
            continue
        backbone, _, context = name[3:].rpartition("_")
        with torch.device("meta"):
            model = xt_plugins.create_model(backbone, context, num_classes=2)
        params = sum(p.numel() for p in model.parameters()) / 1e6
        print(f"{name:28s} {xt_plugins.BACKBONES[backbone]:28s} {context:8s} {params:10.1f}")
    return 0
