"""GPU check (run by gpu_check.sh on a lent H100/H200): xT at paper scale on CUDA.

1. Streaming inference on a 29,000 x 25,000 px image (zarr on local disk) with Swin-V2-T regions
   and Mamba / Transformer-XL context: peak CUDA memory and regions/s.
2. One training step at 8,192^2 (stream_forward: chunked, checkpointed regions) for the same
   models: peak CUDA memory and seconds.

Prints one line per measurement and writes benchmarks/results/gpu_check.json (+ .png).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--infer-size", type=int, nargs=2, default=[29000, 25000], metavar=("W", "H"))
    p.add_argument("--train-size", type=int, default=8192)
    p.add_argument("--contexts", nargs="+", default=["mamba", "txl"])
    p.add_argument("--workdir", type=Path, default=Path("/tmp/xt_gpu"))
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()

    import numpy as np
    import torch
    import zarr

    import xt_plugins
    from xt_plugins.nn.context import mamba as mamba_mod

    assert torch.cuda.is_available(), "gpu_check needs CUDA"
    dev = torch.device("cuda")
    w, h = args.infer_size
    args.workdir.mkdir(parents=True, exist_ok=True)
    path = args.workdir / f"image_{w}x{h}.zarr"
    if not path.exists():
        arr = zarr.create_array(str(path), shape=(3, h, w), chunks=(3, 2048, 2048), dtype="uint8")
        rng = np.random.default_rng(0)
        tile = rng.integers(0, 255, size=(3, 2048, 2048), dtype=np.uint8)
        for y in range(0, h, 2048):
            for x in range(0, w, 2048):
                hh, ww = min(2048, h - y), min(2048, w - x)
                arr[:, y : y + hh, x : x + ww] = tile[:, :hh, :ww]
    image = zarr.open_array(str(path), mode="r")
    mean = torch.tensor([0.485, 0.456, 0.406], device=dev).view(1, 3, 1, 1) * 255
    std = torch.tensor([0.229, 0.224, 0.225], device=dev).view(1, 3, 1, 1) * 255

    def norm(x):
        return (x - mean) / std

    rows = []
    print(
        f"device {torch.cuda.get_device_name(0)}; mamba-ssm kernels: {mamba_mod.HAS_MAMBA_SSM}",
        flush=True,
    )
    for ctx in args.contexts:
        torch.manual_seed(0)
        model = xt_plugins.create_model("swinv2_tiny", ctx, num_classes=2, context_pool=2).to(dev)
        torch.cuda.reset_peak_memory_stats()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            res = xt_plugins.stream_predict(
                model,
                image,
                region_batch=64,
                transform=norm,
                progress=True,
                read_workers=4,
                prefetch=4,
            )
        peak = torch.cuda.max_memory_allocated() / 2**30
        row = dict(
            kind="infer",
            context=ctx,
            size=f"{w}x{h}",
            regions=res.grid.num_regions,
            regions_per_s=res.regions_per_second,
            seconds=res.seconds,
            peak_cuda_gb=peak,
        )
        print(row, flush=True)
        rows.append(row)

        model.train()
        model.region_chunk, model.checkpoint_regions = 32, True
        s = args.train_size
        x = torch.from_numpy(image[:, :s, :s]).float()  # the source stays on the host
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = xt_plugins.stream_forward(model, x, transform=norm)
            loss = torch.nn.functional.cross_entropy(
                logits[None].float(), torch.tensor([1], device=dev)
            )
        loss.backward()
        torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        row = dict(
            kind="train_step",
            context=ctx,
            size=f"{s}x{s}",
            regions=model.grid_for(s, s).num_regions,
            seconds=seconds,
            regions_per_s=model.grid_for(s, s).num_regions / seconds,
            peak_cuda_gb=torch.cuda.max_memory_allocated() / 2**30,
        )
        print(row, flush=True)
        rows.append(row)
        del model, x, logits, loss
        torch.cuda.empty_cache()
    _common.save("gpu_check", {"rows": rows}, args.out)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.bar(
        [f"{r['kind']}\n{r['context']} {r['size']}" for r in rows],
        [r["peak_cuda_gb"] for r in rows],
    )
    ax.set_ylabel("peak CUDA memory (GiB)")
    fig.tight_layout()
    fig.savefig(_common.figure_path("gpu_check", args.out), dpi=120)


if __name__ == "__main__":
    main()
