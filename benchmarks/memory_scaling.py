"""Peak memory of streaming inference / training vs the plain backbone, per image size.

Every measurement runs in a fresh subprocess (peak RSS = ``ru_maxrss``; USS beside it, since
pages of a memory-mapped source would otherwise count). Images are zarr arrays on disk written
chunk by chunk, so the image itself never sits in memory on the streaming path; the GeoTIFF case
(``stream_tif``) streams the same pixels from a tiled, deflate-compressed GeoTIFF through
``RasterSource`` (GDAL's block cache bounded by the source, nothing set by hand), written by
the parent before its child starts.

    python benchmarks/memory_scaling.py                 # 2k..32k, small ConvNeXt, ~10 min
    python benchmarks/memory_scaling.py --sizes 2048 4096 --train-sizes 2048 4096
    python benchmarks/memory_scaling.py --sizes --train-sizes --plain-sizes \
        --tif-sizes 4096 16384 --tif-nocap-sizes 4096 16384    # GeoTIFF only, with the control

Targets (issue 3): streaming peak at 32k^2 <= 1.3 x peak at 4k^2; a training step's peak at
16k^2 <= 2 x its peak at 4k^2. Issue 16: streaming from a GeoTIFF, 16k^2 / 4k^2 peak <= 1.15
without touching GDAL settings (``stream_tif_nocap``, with ``cache_mb=None``, shows GDAL's
default 5 %-of-RAM cache for comparison).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

# A small ConvNeXt region encoder so 32k^2 (16,384 regions) streams in minutes on 2 CPU cores;
# the region encoder's size shifts the baseline, not the slope.
MODEL = dict(
    region_encoder="convnext_tiny",
    context="mamba",
    region_size=256,
    num_classes=2,
    context_pool=2,
    dims=(32, 64, 128, 256),
    depths=(1, 1, 2, 1),
)


# Training steps keep gradients for a quarter of the regions (grad_ratio), the way xT trains on
# huge images; it bounds the CPU time of the 16k^2 step, and memory is what is measured here.
TRAIN_GRAD_RATIO = 0.25


def _model(**extra):
    import torch

    import xt_plugins

    torch.manual_seed(0)
    kw = dict(MODEL, **extra)
    return xt_plugins.create_model(kw.pop("region_encoder"), kw.pop("context"), **kw)


def tif_path(workdir: Path, size: int) -> Path:
    return workdir / f"img_{size}.tif"


def child(mode: str, size: int, workdir: Path, threads: int, cap_gb: float) -> dict:
    import resource

    import psutil
    import torch

    torch.set_num_threads(threads)
    if mode.startswith("stream_tif"):
        from xt_plugins.io import RasterSource

        cache = {} if mode == "stream_tif" else {"cache_mb": None}
        image = RasterSource(tif_path(workdir, size), **cache)  # written by the parent
    else:
        image = _common.make_zarr_image(workdir / f"img_{size}.zarr", size)
    if mode == "plain":
        import timm

        kw = {k: MODEL[k] for k in ("dims", "depths")}
        model = timm.create_model("convnext_tiny", features_only=True, **kw).eval()
    else:
        model = _model(
            region_chunk=16,
            checkpoint_regions=True,
            checkpoint_context=True,
            grad_ratio=TRAIN_GRAD_RATIO,
        )
    base_rss, base_uss = psutil.Process().memory_info().rss / 2**20, _common.uss_mb()
    vms = psutil.Process().memory_info().vms
    resource.setrlimit(resource.RLIMIT_AS, (int(vms + cap_gb * 2**30), resource.RLIM_INFINITY))
    t0 = time.perf_counter()
    out = {"mode": mode, "size": size, "baseline_rss_mb": base_rss, "baseline_uss_mb": base_uss}
    try:
        if mode.startswith("stream"):
            import xt_plugins

            res = xt_plugins.stream_predict(
                model, image, region_batch=16, progress=False, transform=lambda x: x / 255.0
            )
            out["regions_per_second"] = res.regions_per_second
            out["regions"] = res.grid.num_regions
        elif mode == "train":
            import xt_plugins

            model.train()
            logits = xt_plugins.stream_forward(model, image, transform=lambda x: x / 255.0)
            torch.nn.functional.cross_entropy(logits[None], torch.tensor([1])).backward()
        else:  # the plain backbone on the whole image
            with torch.inference_mode():
                x = torch.from_numpy(image[:]).float()[None] / 255.0
                model(x)
        out["ok"] = True
    except (RuntimeError, MemoryError) as err:
        out["ok"] = False
        out["error"] = str(err).splitlines()[0][:200]
    out["seconds"] = time.perf_counter() - t0
    out["peak_rss_mb"] = _common.peak_rss_mb()
    out["uss_mb"] = _common.uss_mb()
    return out


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--sizes", type=int, nargs="*", default=[2048, 4096, 8192, 16384, 32768])
    p.add_argument("--train-sizes", type=int, nargs="*", default=[4096, 16384])
    p.add_argument("--plain-sizes", type=int, nargs="*", default=[2048, 4096, 8192, 16384])
    p.add_argument(
        "--tif-sizes", type=int, nargs="*", default=[4096, 16384], help="GeoTIFF streaming"
    )
    p.add_argument(
        "--tif-nocap-sizes",
        type=int,
        nargs="*",
        default=[],
        help="GeoTIFF streaming with GDAL's default cache (RasterSource(cache_mb=None))",
    )
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--cap-gb", type=float, default=18.0, help="memory cap for each child (GiB)")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/xt_bench_images"))
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--child", nargs=2, metavar=("MODE", "SIZE"), help=argparse.SUPPRESS)
    args = p.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    if args.child:
        print(
            json.dumps(
                child(args.child[0], int(args.child[1]), args.workdir, args.threads, args.cap_gb)
            )
        )
        return
    rows = []
    plan = [("stream", s) for s in args.sizes] + [("train", s) for s in args.train_sizes]
    plan += [("plain", s) for s in args.plain_sizes]
    plan += [("stream_tif", s) for s in args.tif_sizes]
    plan += [("stream_tif_nocap", s) for s in args.tif_nocap_sizes]
    for size in sorted(set(args.tif_sizes) | set(args.tif_nocap_sizes)):
        _common.make_geotiff_image(tif_path(args.workdir, size), size)
    for mode, size in plan:
        r = _common.run_child(
            [
                __file__,
                "--child",
                mode,
                str(size),
                "--threads",
                str(args.threads),
                "--cap-gb",
                str(args.cap_gb),
                "--workdir",
                str(args.workdir),
            ]
        )
        r.setdefault("mode", mode)
        r.setdefault("size", size)
        rows.append(r)
        status = "ok" if r.get("ok") else f"FAILED ({r.get('error', '')[:60]})"
        print(
            f"{mode:16s} {size:6d}px  peak {r.get('peak_rss_mb', float('nan')):8.0f} MB  "
            f"baseline {r.get('baseline_rss_mb', float('nan')):6.0f} MB  "
            f"{r.get('seconds', float('nan')):7.1f} s  {status}",
            flush=True,
        )
    peak = {(r["mode"], r["size"]): r.get("peak_rss_mb") for r in rows if r.get("ok")}
    ratios = {}
    for mode, sizes in (
        ("stream", args.sizes),
        ("train", args.train_sizes),
        ("stream_tif", args.tif_sizes),
        ("stream_tif_nocap", args.tif_nocap_sizes),
    ):
        if sizes and (mode, 4096) in peak and (mode, max(sizes)) in peak and max(sizes) > 4096:
            ratios[f"{mode}_{max(sizes)}_over_4096"] = peak[(mode, max(sizes))] / peak[(mode, 4096)]
    for k, v in ratios.items():
        print(f"{k}: {v:.2f}")
    _common.save(
        "memory_scaling",
        {
            "model": {k: str(v) for k, v in MODEL.items()},
            "train": {
                "region_chunk": 16,
                "checkpoint_regions": True,
                "checkpoint_context": True,
                "grad_ratio": TRAIN_GRAD_RATIO,
            },
            "threads": args.threads,
            "cap_gb": args.cap_gb,
            "rows": rows,
            "ratios": ratios,
        },
        args.out,
    )
    plot(rows, _common.figure_path("memory_scaling", args.out))


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    styles = (
        ("stream", "o-"),
        ("stream_tif", "D-"),
        ("stream_tif_nocap", "D:"),
        ("train", "s-"),
        ("plain", "x--"),
    )
    for mode, style in styles:
        ok = [r for r in rows if r["mode"] == mode and r.get("ok")]
        if ok:
            ax.plot(
                [r["size"] for r in ok],
                [r["peak_rss_mb"] / 1024 for r in ok],
                style,
                label={
                    "stream": "xT streaming inference (zarr)",
                    "stream_tif": "xT streaming inference (GeoTIFF)",
                    "stream_tif_nocap": "GeoTIFF, GDAL's default cache",
                    "train": "xT training step (stream_forward)",
                    "plain": "plain backbone, whole image",
                }[mode],
            )
        for r in rows:
            if r["mode"] == mode and not r.get("ok"):
                ax.axvline(r["size"], color="red", alpha=0.3)
                ax.text(
                    r["size"],
                    ax.get_ylim()[1] * 0.9,
                    f"{mode} fails",
                    rotation=90,
                    color="red",
                    fontsize=8,
                )
    ax.set_xscale("log", base=2)
    ax.set_xlabel("image side (px)")
    ax.set_ylabel("peak RSS (GiB)")
    ax.set_title("Peak memory vs image size (CPU)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
