"""End-to-end streaming throughput vs the bare region encoder.

``stream_predict`` reads regions from a numpy memmap on disk in a background thread, encodes
them, keeps their context tokens, runs the context encoder and the head. The bare region
encoder runs on the same number of regions already in memory, same batch size. Warm-up once,
then the median of ``--repeats`` runs each, alternating, in one process.

    python benchmarks/throughput.py                      # ConvNeXt-T + Mamba, 3072^2, 2 threads
    python benchmarks/throughput.py --context-pool 2     # 2 x 2 context tokens per region
    python benchmarks/throughput.py --context none       # the streaming machinery alone
    python benchmarks/throughput.py --precision bf16     # bf16 autocast (both sides)

Target (issue 3): streaming / bare >= 0.85.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--backbone", default="convnext_tiny")
    p.add_argument("--context", default="mamba")
    p.add_argument("--context-pool", type=int, default=None, help="k x k context tokens per region")
    p.add_argument("--size", type=int, default=3072)
    p.add_argument("--region-batch", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--precision", default="32", choices=["32", "bf16", "16"], help="autocast")
    args = p.parse_args()

    import numpy as np
    import torch

    import xt_plugins
    from xt_plugins.infer.precision import autocast

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = xt_plugins.create_model(
        args.backbone, args.context, num_classes=2, context_pool=args.context_pool
    ).eval()
    tmp = Path(tempfile.mkdtemp(prefix="xt_tp_"))
    mm = np.lib.format.open_memmap(
        tmp / "image.npy", mode="w+", dtype=np.uint8, shape=(3, args.size, args.size)
    )
    rng = np.random.default_rng(0)
    for y in range(0, args.size, 1024):
        mm[:, y : y + 1024] = rng.integers(0, 255, size=mm[:, y : y + 1024].shape, dtype=np.uint8)
    mm.flush()
    image = np.load(tmp / "image.npy", mmap_mode="r")
    grid = model.grid_for(args.size, args.size)
    n = grid.num_regions
    crops = torch.rand(args.region_batch, 3, 256, 256)

    def bare() -> float:
        t0 = time.perf_counter()
        with torch.inference_mode(), autocast(args.precision, "cpu"):
            for start in range(0, n, args.region_batch):
                model.region_encoder(crops[: min(args.region_batch, n - start)])
        return n / (time.perf_counter() - t0)

    def stream() -> float:
        res = xt_plugins.stream_predict(
            model,
            image,
            region_batch=args.region_batch,
            progress=False,
            transform=lambda x: x / 255.0,
            precision=args.precision,
        )
        return res.grid.num_regions / res.seconds

    bare(), stream()  # warm-up
    runs = {"bare": [], "stream": []}
    for _ in range(args.repeats):
        runs["bare"].append(bare())
        runs["stream"].append(stream())
    med = {k: statistics.median(v) for k, v in runs.items()}
    ratio = med["stream"] / med["bare"]
    pool = "all tokens" if args.context_pool is None else f"context_pool={args.context_pool}"
    print(
        f"{args.backbone} + {args.context} ({pool}), {args.size}^2 ({n} regions of 256 px), "
        f"{args.threads} threads, precision {args.precision}"
    )
    print(f"bare region encoder (regions in memory): {med['bare']:.2f} regions/s")
    print(f"stream_predict from a memmap, end to end: {med['stream']:.2f} regions/s")
    print(f"ratio: {ratio:.3f}  (target >= 0.85)")
    _common.save(
        "throughput",
        {
            "backbone": args.backbone,
            "context": args.context,
            "context_pool": args.context_pool,
            "size": args.size,
            "regions": n,
            "region_batch": args.region_batch,
            "threads": args.threads,
            "precision": args.precision,
            "runs_regions_per_s": runs,
            "median_regions_per_s": med,
            "ratio": ratio,
        },
        args.out,
    )
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4))
    ax.bar(
        ["bare region encoder\n(in memory)", "stream_predict\n(memmap, end to end)"],
        [med["bare"], med["stream"]],
        color=["#888", "#2a7"],
    )
    ax.set_ylabel("regions / s")
    ax.set_title(f"Throughput ratio {ratio:.2f}")
    fig.tight_layout()
    path = _common.figure_path("throughput", args.out)
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
