"""Side by side with the peers a user would pick: MONAI's whole-slide pipeline, mambapy's scan.

(a) Whole-slide inference: MONAI's native way (``PatchInferer`` +
``WSISlidingWindowSplitter(reader="OpenSlide")`` + ``AvgMerger``) against
``xt_plugins.stream_predict`` on the same generated JPEG pyramidal slide, with the same region
encoder and weights (an xT model with context ``none``, so both do the same work: encode every
region, pool, classify). Both read every region (no tissue mask) in batches; figures are
regions/s, medians of alternating runs. Beside them: the bare region encoder on in-memory
batches (the compute ceiling), OpenSlide's ``read_region`` alone and ``SlideSource.read``
alone (the reading ceiling and our overhead on it).

(b) Selective scan: ``xt_plugins.nn.ops.selective_scan`` against ``mambapy.pscan`` (the
pure-PyTorch parallel scan that Hugging Face's Mamba also uses off-GPU) on identical inputs,
d=512, n=16, batch 1, time-major (b, d, l) views as ``Mamba`` passes them, with softplus, the
D skip and the z gate on both sides; results checked equal (max abs diff). At 1 and 2 threads,
on a quiet machine and with a busy neighbour (a second process doing matmuls on 2 threads for
the duration, see ``_common.BusyNeighbour``).

    python benchmarks/peers.py            # ~10-20 min on 2 cores (16k tokens: ~3 GB for mambapy)
    python benchmarks/peers.py --quick    # ~3 min: a 3k^2 slide, 1k/4k tokens, one repeat
    xt-plugins bench peers [--quick]

Needs the ``bench`` extra (``pip install -e .[bench]``: mambapy). Targets (issue 16):
``stream_predict`` >= 1.15x MONAI with a fast region encoder; ``SlideSource.read`` within 10 %
of ``read_region``; our scan >= 5x mambapy in every setting, and with 2 threads and a busy
neighbour no slower than 1.5x its 1-thread time with the same neighbour.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

REGION = 256
ENCODERS = ("convnext_atto", "test_convnext")  # timm names: a small real one, timm's tiny test one


# ---------------------------------------------------------------------------- (a) slides
def slide_path(workdir: Path, size: int) -> Path:
    from xt_plugins.data import make_slide

    path = workdir / f"peers_slide_{size}.tiff"
    if not path.exists():
        tmp = path.with_suffix(".part.tiff")
        make_slide(tmp, size, size, seed=1, tumor=True, compression="jpeg", tile=512)
        tmp.replace(path)
    return path


def xt_model(encoder: str) -> Any:
    import torch

    import xt_plugins

    torch.manual_seed(0)
    return xt_plugins.create_model(encoder, "none", region_size=REGION, num_classes=2).eval()


class RegionClassifier:
    """The per-region network MONAI runs: the xT model's region encoder, mean pool and head.

    Returns (B, num_classes, 1, 1) probabilities, so ``AvgMerger`` builds the region map.
    """

    def __init__(self, model: Any) -> None:
        self.model = model

    def __call__(self, x: Any) -> Any:
        import torch

        last = self.model.region_encoder(x)[-1]  # (B, C, h, w)
        probs = torch.softmax(self.model.forward_head(last.mean(dim=(2, 3))), dim=-1)
        return probs[:, :, None, None]


def monai_pipeline(path: Path, model: Any, batch: int, buffer_size: int) -> tuple[Any, int]:
    """MONAI's native whole-slide inference; returns the (num_classes, rows, cols) map."""
    import torch
    from monai.inferers import AvgMerger, PatchInferer, WSISlidingWindowSplitter

    inferer = PatchInferer(
        splitter=WSISlidingWindowSplitter(patch_size=REGION, reader="OpenSlide"),
        merger_cls=AvgMerger,
        batch_size=batch,
        buffer_size=buffer_size,
        preprocessing=lambda x: x.float() / 255.0,
    )
    with torch.inference_mode():
        out = inferer(str(path), RegionClassifier(model))
    return out[0], int(out[0].shape[-2] * out[0].shape[-1])


def ours(path: Path, model: Any, batch: int, read_workers: int) -> tuple[Any, int]:
    import xt_plugins

    res = xt_plugins.stream_predict(
        model,
        str(path),
        region_batch=batch,
        progress=False,
        transform=lambda x: x / 255.0,
        read_workers=read_workers,
    )
    g = res.grid
    return res.region_outputs.T.reshape(-1, g.rows, g.cols), g.num_regions


def bare_encoder(model: Any, batch: int, regions: int) -> Any:
    import torch

    x = torch.rand(batch, 3, REGION, REGION)
    net = RegionClassifier(model)

    def run() -> None:
        with torch.inference_mode():
            for _ in range(0, regions, batch):
                net(x)

    return run


def reads(path: Path, regions: int) -> dict[str, Any]:
    import openslide

    from xt_plugins.io import SlideSource

    slide = openslide.OpenSlide(str(path))
    src = SlideSource(path)
    cols = src.width // REGION
    spots = [(i // cols * REGION, i % cols * REGION) for i in range(regions)]

    def raw() -> None:
        for y, x in spots:
            slide.read_region((x, y), 0, (REGION, REGION))

    def ours_read() -> None:
        for y, x in spots:
            src.read(y, x, REGION, REGION)
            src.read_mask(y, x, REGION, REGION)  # what stream_predict asks for

    return {"openslide_read_region": raw, "SlideSource.read": ours_read}


def bench_slides(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    torch.set_num_threads(args.threads)
    path = slide_path(args.workdir, args.slide_size)
    regions = (args.slide_size // REGION) ** 2
    out: dict[str, Any] = {
        "slide": {"size": args.slide_size, "compression": "jpeg", "tile": 512, "path": str(path)},
        "region": REGION,
        "regions": regions,
        "batch": args.batch,
        "threads": args.threads,
        "repeats": args.repeats,
        "tissue_mask": None,
    }
    times = _common.alternate(reads(path, regions), repeats=max(args.repeats, 3))
    out["reading"] = {k: regions / _common.median(v) for k, v in times.items()}
    out["reading"]["SlideSource_over_read_region_time"] = _common.median(
        times["SlideSource.read"]
    ) / _common.median(times["openslide_read_region"])
    print(
        f"reading {regions} regions: read_region {out['reading']['openslide_read_region']:.0f}/s, "
        f"SlideSource.read {out['reading']['SlideSource.read']:.0f}/s "
        f"({out['reading']['SlideSource_over_read_region_time']:.3f}x the time; target <= 1.10)",
        flush=True,
    )
    out["encoders"] = {}
    for encoder in args.encoders:
        model = xt_model(encoder)
        runs = {
            "monai": lambda m=model: monai_pipeline(path, m, args.batch, 0),
            "monai_buffered": lambda m=model: monai_pipeline(path, m, args.batch, args.batch),
        }
        for w in args.read_workers:
            runs[f"stream_predict_w{w}"] = lambda m=model, w=w: ours(path, m, args.batch, w)
        results: dict[str, Any] = {}

        def timed(name: str, fn: Any, results: dict[str, Any] = results) -> Any:
            def run() -> None:
                results[name] = fn()[0]

            return run

        times = _common.alternate(
            {k: timed(k, f) for k, f in runs.items()}, repeats=args.repeats, warmup=1
        )
        enc = _common.alternate({"encoder": bare_encoder(model, args.batch, regions)}, 1, 1)
        rate = {k: regions / _common.median(v) for k, v in times.items()}
        rate["bare_encoder"] = regions / _common.median(enc["encoder"])
        best_monai = max(rate["monai"], rate["monai_buffered"])
        best_ours = max(rate[f"stream_predict_w{w}"] for w in args.read_workers)
        ref = results["monai"].float()
        diffs = {k: float((v.float() - ref).abs().max()) for k, v in results.items()}
        row = {
            "regions_per_second": rate,
            "seconds": {k: _common.median(v) for k, v in times.items()},
            "ratio_best_ours_over_best_monai": best_ours / best_monai,
            "max_abs_diff_vs_monai": diffs,
        }
        out["encoders"][encoder] = row
        print(
            f"{encoder}: "
            + ", ".join(f"{k} {v:.1f}" for k, v in rate.items())
            + f" regions/s; stream_predict / MONAI = {row['ratio_best_ours_over_best_monai']:.2f}x"
            f" (target >= 1.15); max |probs - MONAI's| "
            f"{max(diffs.values()):.1e}",
            flush=True,
        )
    return out


# ---------------------------------------------------------------------------- (b) scans
def scan_inputs(length: int, d: int, n: int, seed: int = 0) -> dict[str, Any]:
    """Mamba's scan operands for one sequence, (b, d, l) views of time-major (b, l, d) memory."""
    import torch

    g = torch.Generator().manual_seed(seed)
    tm = {  # time-major, as Mamba's projections produce them
        "u": torch.randn(1, length, d, generator=g),
        "delta": torch.randn(1, length, d, generator=g) * 0.5 - 1.0,
        "z": torch.randn(1, length, d, generator=g),
        "B": torch.randn(1, length, n, generator=g),
        "C": torch.randn(1, length, n, generator=g),
    }
    A = -torch.exp(torch.randn(d, n, generator=g) * 0.5)
    return {
        **{k: v.transpose(1, 2) for k, v in tm.items()},  # (b, d, l) / (b, n, l) views
        "A": A,
        "D": torch.randn(d, generator=g),
        "delta_bias": torch.randn(d, generator=g) * 0.1,
    }


def ours_scan(x: dict[str, Any]) -> Any:
    import torch

    from xt_plugins.nn.ops import selective_scan

    with torch.inference_mode():
        return selective_scan(
            x["u"], x["delta"], x["A"], x["B"], x["C"], x["D"], x["z"], x["delta_bias"], True
        )


def mambapy_scan(x: dict[str, Any]) -> Any:
    """mambapy's ``MambaBlock.selective_scan`` (pscan) with the same softplus, D and z gate."""
    import torch
    import torch.nn.functional as F
    from mambapy.pscan import pscan

    with torch.inference_mode():
        u = x["u"].transpose(1, 2)  # (b, l, d): mambapy's layout (a view back to time-major)
        delta = F.softplus(x["delta"].transpose(1, 2) + x["delta_bias"])
        B, C = x["B"].transpose(1, 2), x["C"].transpose(1, 2)  # (b, l, n)
        delta_a = torch.exp(delta.unsqueeze(-1) * x["A"])  # (b, l, d, n)
        bx = delta.unsqueeze(-1) * B.unsqueeze(2) * u.unsqueeze(-1)  # (b, l, d, n)
        hs = pscan(delta_a, bx)
        y = (hs @ C.unsqueeze(-1)).squeeze(3) + x["D"] * u  # (b, l, d)
        y = y * F.silu(x["z"].transpose(1, 2))
        return y.transpose(1, 2)  # (b, d, l), like ours


def bench_scans(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    rows = []
    for length in args.lengths:
        x = scan_inputs(length, args.d_model, args.d_state)
        torch.set_num_threads(2)
        ref = mambapy_scan(x)
        diff = float((ours_scan(x) - ref).abs().max())
        rel = diff / float(ref.abs().max())
        del ref
        for busy in (False, True):
            for threads in (1, 2):
                torch.set_num_threads(threads)
                fns = {"ours": lambda x=x: ours_scan(x), "mambapy": lambda x=x: mambapy_scan(x)}
                if busy:
                    with _common.BusyNeighbour(threads=2, max_seconds=args.neighbour_seconds):
                        times = _common.alternate(fns, repeats=args.repeats)
                else:
                    times = _common.alternate(fns, repeats=args.repeats)
                row = {
                    "tokens": length,
                    "threads": threads,
                    "neighbour": busy,
                    "ours_s": _common.median(times["ours"]),
                    "mambapy_s": _common.median(times["mambapy"]),
                    "max_abs_diff": diff,
                    "max_abs_diff_over_max_abs": rel,
                    "all_s": times,
                }
                row["speedup"] = row["mambapy_s"] / row["ours_s"]
                rows.append(row)
                print(
                    f"scan L={length:6d} threads={threads} {'busy' if busy else 'quiet'}: "
                    f"ours {row['ours_s']:.3f} s, mambapy {row['mambapy_s']:.3f} s "
                    f"({row['speedup']:.1f}x; target >= 5x), "
                    f"max |diff| {diff:.1e} ({rel:.1e} of max |y|)",
                    flush=True,
                )
    checks = {}
    for length in args.lengths:
        by = {(r["threads"], r["neighbour"]): r for r in rows if r["tokens"] == length}
        if (1, True) in by and (2, True) in by:
            checks[f"busy_2t_over_1t_{length}"] = by[(2, True)]["ours_s"] / by[(1, True)]["ours_s"]
    for k, v in checks.items():
        print(f"{k}: {v:.2f} (target <= 1.5 at 16k tokens)")
    return {
        "d_model": args.d_model,
        "d_state": args.d_state,
        "batch": 1,
        "layout": "time-major (b, d, l) views",
        "repeats": args.repeats,
        "rows": rows,
        "checks": checks,
        "min_speedup": min(r["speedup"] for r in rows) if rows else None,
    }


# ---------------------------------------------------------------------------- output
def plot(data: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_s, ax_t) = plt.subplots(1, 2, figsize=(12, 4.5))
    slides = data.get("slides")
    if slides:
        names = list(next(iter(slides["encoders"].values()))["regions_per_second"])
        width = 0.8 / len(names)
        for i, name in enumerate(names):
            vals = [e["regions_per_second"][name] for e in slides["encoders"].values()]
            xs = [j + i * width for j in range(len(vals))]
            ax_s.bar(xs, vals, width, label=name)
        ax_s.set_xticks([j + 0.4 - width / 2 for j in range(len(slides["encoders"]))])
        ax_s.set_xticklabels(list(slides["encoders"]))
        ax_s.set_ylabel("regions / s")
        ax_s.set_title(f"whole slide {slides['slide']['size']}^2, {slides['threads']} threads")
        ax_s.legend(fontsize=7)
    scans = data.get("scans")
    if scans:
        for threads, busy, style in ((1, False, "o-"), (2, False, "s-"), (1, True, "o--"),
                                     (2, True, "s--")):  # fmt: skip
            rs = [r for r in scans["rows"] if r["threads"] == threads and r["neighbour"] == busy]
            if rs:
                label = f"{threads}t {'busy' if busy else 'quiet'}"
                ax_t.loglog([r["tokens"] for r in rs], [r["ours_s"] for r in rs], style,
                            color="C0", label=f"ours {label}")  # fmt: skip
                ax_t.loglog([r["tokens"] for r in rs], [r["mambapy_s"] for r in rs], style,
                            color="C3", label=f"mambapy {label}")  # fmt: skip
        ax_t.set_xlabel("tokens")
        ax_t.set_ylabel("seconds")
        ax_t.set_title(f"selective scan, d={scans['d_model']}, n={scans['d_state']}")
        ax_t.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="small sizes, one repeat (~3 min)")
    p.add_argument("--skip", choices=("slides", "scans"), action="append", default=[])
    p.add_argument("--slide-size", type=int, default=None, help="slide side (default 6144)")
    p.add_argument("--encoders", nargs="+", default=list(ENCODERS), help="timm region encoders")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--threads", type=int, default=2, help="torch threads for part (a)")
    p.add_argument("--read-workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--lengths", type=int, nargs="+", default=None, help="default 1k 4k 16k")
    p.add_argument("--d-model", type=int, default=512)
    p.add_argument("--d-state", type=int, default=16)
    p.add_argument("--repeats", type=int, default=None, help="default 3 (1 with --quick)")
    p.add_argument("--neighbour-seconds", type=float, default=900.0, help="neighbour's bound")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/xt_bench_images"))
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    args.slide_size = args.slide_size or (3072 if args.quick else 6144)
    args.lengths = args.lengths or ([1024, 4096] if args.quick else [1024, 4096, 16384])
    args.repeats = args.repeats or (1 if args.quick else 3)
    args.workdir.mkdir(parents=True, exist_ok=True)
    try:
        import mambapy  # noqa: F401
    except ImportError:
        if "scans" not in args.skip:
            sys.exit("peers.py needs mambapy for the scan part: pip install -e '.[bench]'")
    t0 = time.perf_counter()
    data: dict[str, Any] = {
        "quick": args.quick,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "note": "timings on a shared machine are noisy: compare ratios measured in one run",
    }
    if "slides" not in args.skip:
        data["slides"] = bench_slides(args)
    if "scans" not in args.skip:
        data["scans"] = bench_scans(args)
    data["seconds"] = time.perf_counter() - t0
    _common.save("peers", data, args.out)
    plot(data, _common.figure_path("peers", args.out))


if __name__ == "__main__":
    main()
