"""Core commands: ``models`` (and later ``demo`` and ``bench``)."""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["register"]


def register(sub: argparse._SubParsersAction) -> None:
    """Add the core commands to the ``xt-plugins`` parser."""
    p = sub.add_parser("models", help="list registered xT models and their size")
    p.add_argument("--filter", default="*", help="glob on model names (default: all)")
    p.set_defaults(func=_models)

    p = sub.add_parser(
        "bench",
        help="run a benchmark script from benchmarks/ (prints figures, writes JSON + PNG)",
        description="Run benchmarks/<NAME>.py; arguments after NAME go to the script.",
    )
    p.add_argument("name", help="scan, memory_scaling, throughput, context_task, ... (or 'list')")
    p.add_argument("args", nargs=argparse.REMAINDER, help="arguments for the script")
    p.set_defaults(func=_bench)


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


def benchmarks_dir() -> Path:
    """The repository's ``benchmarks/`` folder (benchmarks ship with the source tree)."""
    return Path(__file__).resolve().parent.parent / "benchmarks"


def _bench(args: argparse.Namespace) -> int:
    import subprocess
    import sys

    folder = benchmarks_dir()
    scripts = sorted(p.stem for p in folder.glob("[!_]*.py")) if folder.is_dir() else []
    if args.name == "list":
        print("\n".join(scripts))
        return 0
    if args.name not in scripts:
        raise ValueError(
            f"no benchmark {args.name!r} in {folder} (available: {', '.join(scripts) or 'none'})"
        )
    return subprocess.call([sys.executable, str(folder / f"{args.name}.py"), *args.args])
