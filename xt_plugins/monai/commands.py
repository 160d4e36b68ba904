"""Slide commands: ``predict-slide`` (heatmaps, GeoJSON, CSV) and ``make-slides`` (synthetic data).

``predict-slide`` splits its slides across processes when a launcher sets ``RANK`` /
``WORLD_SIZE`` (``torchrun --nproc_per_node N -m xt_plugins.cli predict-slide ...``); each rank
writes ``predictions.rank<R>.csv`` and rank 0 merges them into ``predictions.csv`` once every
rank is done (a gloo barrier when ``MASTER_ADDR`` is set, else marker files).

.. versionadded:: 0.1
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

__all__ = ["register"]

_PROG = "xt-plugins predict-slide"


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``predict-slide`` and ``make-slides`` to the ``xt-plugins`` parser."""
    p = sub.add_parser(
        "predict-slide",
        help="predict whole slides: region heatmaps (Zarr, PNG), GeoJSON and a CSV",
        description=(
            "For each slide writes DIR/<stem>.zarr (region probabilities; OME-Zarr image "
            "DIR/<stem>.zarr/map in microns), DIR/<stem>_heatmap.png, DIR/<stem>.geojson "
            "(QuPath tiles, level-0 px) and a row of DIR/predictions.csv. Under torchrun the "
            "slides are split across processes."
        ),
    )
    p.add_argument("slides", nargs="+", metavar="SLIDE", help="slide files or folders of slides")
    p.add_argument("--out", required=True, type=Path, metavar="DIR", help="output folder")
    p.add_argument(
        "--checkpoint",
        type=Path,
        metavar="CKPT",
        help="trained weights (.pt from the bundle / save_checkpoint, or .safetensors)",
    )
    p.add_argument(
        "--model",
        metavar="NAME",
        help="model name xt_<backbone>_<context> (e.g. xt_swinv2_tiny_mamba); without "
        "--checkpoint it runs untrained weights (plumbing check)",
    )
    p.add_argument(
        "--model-kwargs",
        type=json.loads,
        default={},
        metavar="JSON",
        help="extra XTNet arguments for --model, e.g. '{\"region_chunk\": 16}'",
    )
    p.add_argument("--region-size", type=int, default=256, help="region side for --model (px)")
    p.add_argument("--num-classes", type=int, default=2, help="classes for --model")
    p.add_argument("--mpp", type=float, default=0.5, help="microns per pixel to work at")
    p.add_argument(
        "--slide-mpp", type=float, metavar="M", help="level-0 mpp for slides that lack it"
    )
    p.add_argument("--batch", type=int, default=16, help="regions per batch")
    p.add_argument("--min-tissue", type=float, default=0.1, help="tissue fraction per region")
    p.add_argument(
        "--threshold", type=float, default=0.5, help="positive probability for the GeoJSON"
    )
    p.add_argument("--thumbnail-size", type=int, default=2048, help="heatmap / tissue-mask side")
    p.add_argument(
        "--geojson",
        choices=["positive", "tissue"],
        default="positive",
        help="regions in the QuPath GeoJSON: positive ones (default) or all tissue",
    )
    p.add_argument(
        "--precision",
        choices=["32", "bf16", "16"],
        default="32",
        help="autocast of the region encoder: 32, bf16 (CPU/CUDA), 16 (CUDA only)",
    )
    p.add_argument("--tta", choices=["none", "flips"], default="none",
                   help="test-time flips of each region batch (4x compute)")  # fmt: skip
    p.add_argument("--device", default="auto", help="auto (cuda:LOCAL_RANK if any), cpu, cuda:0")
    p.add_argument("--seed", type=int, default=0, help="seed of untrained weights")
    p.add_argument("--no-resume", action="store_true", help="recompute finished slides")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.add_argument(
        "--dist-timeout",
        type=float,
        default=24 * 60,
        metavar="MIN",
        help="minutes ranks wait for each other (default: a day)",
    )
    p.set_defaults(func=_predict_slide)

    m = sub.add_parser(
        "make-slides",
        help="write synthetic H&E-like pyramidal TIFF slides with labels.csv",
    )
    m.add_argument("out", type=Path, metavar="DIR", help="output folder")
    m.add_argument("--n", type=int, default=6, help="number of slides (half with tumor)")
    m.add_argument(
        "--size", type=_size, default=(40000, 30000), metavar="WxH", help="level-0 size in px"
    )
    m.add_argument("--mpp", type=float, default=0.5, help="microns per pixel at level 0")
    m.add_argument("--seed", type=int, default=0, help="collection seed")
    m.add_argument(
        "--compression",
        default="jpeg",
        choices=["jpeg", "lzw", "deflate", "none"],
        help="tile compression",
    )
    m.add_argument("--tile", type=int, default=512, help="TIFF tile side")
    m.add_argument("--no-progress", action="store_true", help="hide progress bars")
    m.set_defaults(func=_make_slides)


def _size(text: str) -> tuple[int, int]:
    """``"40000x30000"`` -> (40000, 30000)."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be WIDTHxHEIGHT, got {text!r}") from None
    if w <= 0 or h <= 0:
        raise argparse.ArgumentTypeError(f"size must be positive, got {text!r}")
    return w, h


# ---------------------------------------------------------------------------- make-slides
def _make_slides(args: argparse.Namespace) -> int:
    from ..data import make_slides

    infos = make_slides(
        args.out,
        args.n,
        size=args.size,
        mpp=args.mpp,
        seed=args.seed,
        compression=None if args.compression == "none" else args.compression,
        tile=args.tile,
        progress=not args.no_progress,
    )
    for info in infos:
        kind = f"tumor {info.tumor_fraction:.1%} of tissue" if info.label else "normal"
        print(f"{info.path}: {info.width} x {info.height} px, {info.mpp} um/px, {kind}")
    print(f"labels: {Path(args.out) / 'labels.csv'}")
    return 0


# ---------------------------------------------------------------------------- predict-slide
def _build_network(args: argparse.Namespace) -> Any:
    """XTNet from --checkpoint (its config) and/or --model."""
    import torch

    from ..models import CONTEXTS
    from .networks import XTNet, load_checkpoint, read_checkpoint

    net = None
    if args.model:
        name = args.model
        backbone, _, context = name.removeprefix("xt_").rpartition("_")
        if not name.startswith("xt_") or not backbone or context not in CONTEXTS:
            raise ValueError(
                f"--model must be xt_<backbone>_<context> with context in {list(CONTEXTS)}, "
                f"e.g. xt_swinv2_tiny_mamba; got {name!r} (see `xt-plugins models`)"
            )
        torch.manual_seed(args.seed)  # every rank gets the same untrained weights
        net = XTNet(
            in_channels=3,
            out_channels=args.num_classes,
            region_encoder=backbone,
            context=context,
            region_size=args.region_size,
            **args.model_kwargs,
        )
    if args.checkpoint is not None:
        if net is None:
            _, config = read_checkpoint(args.checkpoint)
            if config is None:
                raise ValueError(
                    f"{args.checkpoint}: the checkpoint records no network config; "
                    "add --model NAME (and --region-size / --model-kwargs) to build the network"
                )
        return load_checkpoint(args.checkpoint, net)
    if net is None:
        raise ValueError("pass --checkpoint CKPT (trained weights) or --model NAME")
    if int(os.environ.get("RANK", 0)) == 0:
        print(
            f"{_PROG}: warning: no --checkpoint: {args.model} runs with untrained weights; "
            "the outputs only check the plumbing",
            file=sys.stderr,
        )
    return net


def _device(name: str) -> Any:
    import torch

    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device(
            "cuda", int(os.environ.get("LOCAL_RANK", 0)) % torch.cuda.device_count()
        )
    return torch.device("cpu")


def _slide_items(entries: list[str]) -> list[Any]:
    """Input items of slide files and folders (a folder's labels.csv adds labels)."""
    from ..infer.runner import expand_inputs
    from .wsi import FOLDER_SUFFIXES, read_slide_data

    return expand_inputs(
        entries, suffixes=FOLDER_SUFFIXES, list_folder=_list_slides(read_slide_data), what="slide"
    )


def _list_slides(read_slide_data: Any) -> Any:
    def list_folder(folder: Path) -> list[dict[str, Any]]:
        try:
            return read_slide_data(folder)
        except FileNotFoundError:  # no slides in it: one failing input, said by the runner
            return []

    return list_folder


def _predict_slide(args: argparse.Namespace) -> int:
    import torch

    from ..infer.precision import check_precision
    from ..infer.runner import init_rank_group, merge_rank_tables, rank_split
    from .inferers import CSV_FIELDS, WholeSlideInferer

    rank = int(os.environ.get("RANK", 0))
    world = int(os.environ.get("WORLD_SIZE", 1))
    items = _slide_items(args.slides)
    mine = rank_split(items, rank, world)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    (out / f"predictions.rank{rank}.done").unlink(missing_ok=True)  # a marker of an earlier run
    group = init_rank_group(world, args.dist_timeout)
    try:
        net = _build_network(args).to(_device(args.device)).eval()
        check_precision(args.precision, next(net.parameters()).device)  # once, not per slide
        inferer = WholeSlideInferer(
            out,
            mpp=args.mpp,
            slide_mpp=args.slide_mpp,
            min_tissue=args.min_tissue,
            region_batch=args.batch,
            threshold=args.threshold,
            thumbnail_size=args.thumbnail_size,
            geojson=args.geojson,
            precision=args.precision,
            tta=None if args.tta == "none" else args.tta,
            resume=not args.no_resume,
            progress=not args.no_progress,
        )
        csv_path = out / ("predictions.csv" if world == 1 else f"predictions.rank{rank}.csv")

        def report(pred: Any) -> None:
            print(f"{_PROG}: error: {pred.error}", file=sys.stderr, flush=True)

        preds = inferer.predict_slides(mine, net, csv_path=csv_path, on_error=report)
        for pred in preds:
            if pred.ok:
                print(
                    f"{pred.slide}: class {pred.prediction}, p={pred.probability:.3f} "
                    f"({pred.tissue_regions} tissue regions, {pred.positive_regions} positive) "
                    f"-> {pred.heatmap}",
                    flush=True,
                )
        ok, total = sum(p.ok for p in preds), len(preds)
        if world > 1:
            ok, total = merge_rank_tables(
                out,
                "predictions.csv",
                CSV_FIELDS,
                rank,
                world,
                (ok, total),
                args.dist_timeout,
                order=[i.key for i in items],
            )
    finally:
        if group:
            torch.distributed.destroy_process_group()
    if rank == 0:
        print(f"{ok} of {total} slides predicted; predictions in {out / 'predictions.csv'}")
    return 0 if ok > 0 else 1
