"""Core commands: ``models``, ``demo``, ``bench`` and ``torchgeo`` (TorchGeo's own CLI).

.. versionadded:: 0.1
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["register", "run_torchgeo"]


def register(sub: argparse._SubParsersAction) -> None:
    """Add the core commands to the ``xt-plugins`` parser."""
    p = sub.add_parser("models", help="list registered xT models and their size")
    p.add_argument("--filter", default="*", help="glob on model names (default: all)")
    p.set_defaults(func=_models)

    p = sub.add_parser(
        "demo",
        help="run the end-to-end demo on synthetic data (slides + SAR scenes) into demo_out/",
        description="Generate a whole slide and a SAR scene, fine-tune small xT models through "
        "the MONAI bundle and torchgeo fit, run whole-slide and whole-scene inference, and "
        "write heatmaps, GeoJSON, a GeoTIFF and summary.json.",
    )
    p.add_argument("--out", type=Path, default=Path("demo_out"), help="output folder")
    p.add_argument("--quick", action="store_true", help="small sizes (a few minutes)")
    p.set_defaults(func=_demo)

    p = sub.add_parser(
        "bench",
        help="run a benchmark script from benchmarks/ (prints figures, writes JSON + PNG)",
        description="Run benchmarks/<NAME>.py; arguments after NAME go to the script.",
    )
    p.add_argument("name", help="scan, memory_scaling, throughput, context_task, ... (or 'list')")
    p.add_argument("args", nargs=argparse.REMAINDER, help="arguments for the script")
    p.set_defaults(func=_bench)

    p = sub.add_parser(
        "torchgeo",
        help="TorchGeo's own command line (fit/validate/test/predict) with the xT models "
        "registered: any stock config may name xt_* models",
        description="Runs `torchgeo ARGS` (torchgeo.main.main, LightningCLI) after importing "
        "xt_plugins, so stock tasks (torchgeo.tasks.Classification, SemanticSegmentation "
        "with tu-xt_...) with stock data modules find the xt_* timm names. Example: "
        "xt-plugins torchgeo fit --config eurosat.yaml. Same as python -m xt_plugins.torchgeo.",
    )
    p.add_argument("args", nargs=argparse.REMAINDER, help="arguments for `torchgeo`")
    p.set_defaults(func=lambda a: run_torchgeo(a.args))


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
    """The ``benchmarks/`` folder (shipped in the wheel; the source tree's in a checkout)."""
    from .resources import shipped_path

    return shipped_path("benchmarks")


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


def run_torchgeo(args: Sequence[str]) -> int:
    """``torchgeo ARGS`` with the xT models registered with timm.

    Args:
        args: TorchGeo's arguments (``fit --config X``, ``fit --print_config``, ...).

    Returns:
        0 (LightningCLI exits with its own code on errors and ``--help``).

    .. versionadded:: 0.2
    """
    from torchgeo.main import main

    import xt_plugins  # noqa: F401 (registers the xt_* names with timm)

    argv, sys.argv = sys.argv, ["torchgeo", *args]  # LightningCLI reads the program name
    try:
        main(list(args))
    finally:
        sys.argv = argv
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .demo import DemoConfig, run_demo

    config = DemoConfig.quick(args.out) if args.quick else DemoConfig(out=args.out)
    summary = run_demo(config)
    print(f"\n{'stage':22s} {'seconds':>8s} {'regions/s':>10s} {'peak MB':>8s}")
    for s in summary["stages"]:
        rps = f"{s['regions_per_second']:.1f}" if s["regions_per_second"] else "-"
        print(f"{s['name']:22s} {s['seconds']:8.1f} {rps:>10s} {s['peak_rss_mb']:8.0f}")
    by_name = {s["name"]: s for s in summary["stages"]}
    slide = by_name.get("infer_slide_bundle", {}).get("metrics") or {}
    scene = by_name.get("infer_scene", {}).get("metrics") or {}
    if slide:
        print(
            f"\nwhole slide: tumor probability {slide['tumor_probability']:.2f} (it has tumor); "
            f"{slide['positive_regions']} of {slide['tissue_regions']} tissue regions positive"
        )
    if scene:
        print(
            f"SAR scene: {scene['detections']} detections for {scene['true_vessels']} vessels; "
            f"xView3 detection F1 {scene.get('xview3_f1_det', float('nan')):.2f}, "
            f"aggregate {scene.get('xview3_aggregate', float('nan')):.2f}"
        )
    out = Path(args.out)
    print(f"\ntotal {summary['total_seconds']:.0f} s. Pictures and results:")
    for path in sorted(out.glob("slide/*_heatmap.png")) + sorted(out.glob("sar/*/heatmap.png")):
        print(f"  {path}")
    print(f"  {out / 'slide'}  (Zarr region map, GeoJSON for QuPath, predictions.csv)")
    print(f"  {out / 'sar'}  (GeoTIFF probability map, detections.csv / .geojson)")
    print(f"  {out / 'summary.json'}")
    return 0
