"""SAR commands: ``make-sar-scenes`` (synthetic xView3-style data) and ``predict-scene``.

.. versionadded:: 0.1
"""

from __future__ import annotations

import argparse
import re

__all__ = ["register"]


def _size(text: str) -> tuple[int, int]:
    """``WIDTHxHEIGHT`` -> (width, height)."""
    m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not m or int(m.group(1)) <= 0 or int(m.group(2)) <= 0:
        raise argparse.ArgumentTypeError(f"size must be WIDTHxHEIGHT in pixels, got {text!r}")
    return int(m.group(1)), int(m.group(2))


def _positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def _no_progress(p: argparse.ArgumentParser) -> None:
    """``--no-progress`` (as ``predict-slide``); ``--quiet`` stays as a deprecated alias."""
    p.add_argument(
        "--no-progress",
        "--quiet",
        dest="no_progress",
        action="store_true",
        help="no progress bars (--quiet: deprecated spelling)",
    )


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``make-sar-scenes`` and ``predict-scene`` to the ``xt-plugins`` parser."""
    p = sub.add_parser(
        "make-sar-scenes",
        help="write synthetic xView3-style SAR scenes (VV/VH dB GeoTIFFs + detections.csv)",
        description="Write N scene folders DIR/scene_XXX/ with VV_dB.tif, VH_dB.tif, "
        "bathymetry.tif and detections.csv (xView3 columns). The TorchGeo configs in "
        "configs/torchgeo read data/sar_scenes.",
    )
    p.add_argument("dir", help="output folder (e.g. data/sar_scenes)")
    p.add_argument("--n", type=_positive, default=4, help="number of scenes (default: 4)")
    p.add_argument(
        "--size", type=_size, default=(6000, 5000), help="WIDTHxHEIGHT px (default: 6000x5000)"
    )
    p.add_argument("--seed", type=int, default=0, help="collection seed (default: 0)")
    p.add_argument("--pixel-size", type=float, default=10.0, help="metres per pixel (default: 10)")
    p.add_argument("--no-bathymetry", action="store_true", help="write VV and VH only")
    _no_progress(p)
    p.set_defaults(func=_make_sar_scenes)

    p = sub.add_parser(
        "predict-scene",
        help="predict whole SAR scenes with a trained checkpoint (COG + CSV + GeoJSON)",
        description="Stream each scene through the model window by window and write "
        "OUT/<scene>/probabilities.tif (a Cloud-Optimized GeoTIFF in the scene CRS) and, for "
        "vessel detection, detections.csv and detections.geojson (QuPath detections) at pixel "
        "centres in map coordinates (pixel coordinates, with a warning, without a CRS). "
        "A bad scene is reported and skipped; the exit code is 0 when at least one scene "
        "succeeded.",
    )
    p.add_argument("checkpoint", help="Lightning checkpoint (.ckpt) from torchgeo fit")
    p.add_argument("scenes", nargs="+", metavar="SCENE_DIR", help="scene folder(s)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument(
        "--window-regions",
        type=_positive,
        default=4,
        help="window side in regions for dense models (default: 4)",
    )
    p.add_argument(
        "--overlap-regions",
        type=int,
        default=1,
        help="overlap on each side in regions (default: 1)",
    )
    p.add_argument(
        "--batch", type=_positive, default=1, help="windows per forward pass (default: 1)"
    )
    p.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="centre probability of a detection (default: the task's score_threshold)",
    )
    p.add_argument(
        "--bands", nargs="+", default=None, help="band names (default: VV VH [bathymetry])"
    )
    p.add_argument(
        "--blend",
        choices=["none", "cosine", "hann"],
        default="none",
        help="dense windows: none (hard centre crops, default) or cosine/hann (overlaps "
        "averaged with Hann-tapered weights: no seams)",
    )
    p.add_argument(
        "--precision",
        choices=["32", "bf16", "16"],
        default="32",
        help="autocast: 32 (default), bf16 (CPU or CUDA), 16 (CUDA only)",
    )
    p.add_argument(
        "--tta", choices=["none", "flips"], default="none", help="test-time flips (4x compute)"
    )
    p.add_argument(
        "--uint8",
        action="store_true",
        help="store probabilities as uint8 (scale 1/254, nodata 255; length in length_m.tif)",
    )
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if available)")
    _no_progress(p)
    p.set_defaults(func=_predict_scene)


def _make_sar_scenes(args: argparse.Namespace) -> int:
    from xt_plugins.data import make_sar_scenes

    width, height = args.size
    scenes = make_sar_scenes(
        args.dir,
        n=args.n,
        size=(width, height),
        seed=args.seed,
        pixel_size=args.pixel_size,
        extra_bands=() if args.no_bathymetry else ("bathymetry",),
        progress=not args.no_progress,
    )
    for s in scenes:
        n = len(s.detections)
        vessels = int(s.detections["is_vessel"].sum())
        print(f"{s.dir}: {s.width} x {s.height} px, {n} objects ({vessels} vessels)")
    return 0


def _predict_scene(args: argparse.Namespace) -> int:
    from .predict import predict_scenes

    results = predict_scenes(
        args.checkpoint,
        args.scenes,
        args.out,
        device=args.device,
        window_regions=args.window_regions,
        overlap_regions=args.overlap_regions,
        batch=args.batch,
        threshold=args.threshold,
        bands=args.bands,
        blend=args.blend,
        precision=args.precision,
        tta=args.tta,
        uint8=args.uint8,
        progress=not args.no_progress,
        skip_errors=not args.debug,  # --debug: the first error raises with its traceback
    )
    failed = [s for s, r in results.items() if isinstance(r, BaseException)]
    if len(failed) == len(results):
        raise RuntimeError(f"all {len(results)} scene(s) failed; nothing was written")
    if failed:
        print(f"{len(results) - len(failed)} scene(s) written, {len(failed)} skipped")
    return 0
