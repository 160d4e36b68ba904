"""docs/blend.png: a scene's dense map with hard centre crops next to the Hann-blended one.

A generated xView3-style scene (768 x 512 px) goes through an untrained tiny xT segmentation
model (Swin-V2 regions of 64 px, Mamba context: each window's output depends on the whole
window, as with any context model; the untrained context branch's output is doubled,
``--context-gain 2``, so that its window dependence shows as a trained one's does) in windows
of 4 x 4 regions overlapping by one region per side, once with ``blend="none"`` and once with
``blend="cosine"``. The figure shows both maps and, below, the column profile of the mean
horizontal gradient: centre crops jump on the 128-px tile grid, the blended map does not. The
script prints the seam ratio (mean |d/dx| on tile-border columns over the mean elsewhere;
1.0 is seam-free).

Usage: ``python benchmarks/blend_figure.py [--out docs/blend.png]`` (CPU, about a minute).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

TINY_SWIN = dict(
    embed_dim=24,
    depths=(1, 1, 1, 1),
    num_heads=(1, 1, 1, 1),
    window_size=4,
    context_kwargs=dict(depth=1, segment_len=8, mem_len=16),
)


def seam_ratio(probs: np.ndarray, step: int) -> float:
    """Mean |d/dx| on tile-border columns over the mean elsewhere (1.0: no seams)."""
    dx = np.abs(np.diff(probs, axis=1))
    ok = np.isfinite(dx)
    cols = np.arange(dx.shape[1])
    border = (cols + 1) % step == 0  # between column k*step - 1 and k*step
    on = dx[:, border][ok[:, border]].mean()
    off = dx[:, ~border][ok[:, ~border]].mean()
    return float(on / off)


def main(argv: list[str] | None = None) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import rasterio
    import torch

    from xt_plugins.data import make_sar_scenes
    from xt_plugins.torchgeo import XTSemanticSegmentation
    from xt_plugins.torchgeo.checkpoints import xt_model
    from xt_plugins.torchgeo.predict import predict_scene

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/blend.png"))
    parser.add_argument("--context-gain", type=float, default=2.0, help="context output scale")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    task = XTSemanticSegmentation(
        backbone="xt_swinv2_tiny_mamba", num_classes=2, region_size=64, model_kwargs=TINY_SWIN
    ).eval()
    with torch.no_grad():
        for p in xt_model(task).context_out.parameters():
            p.mul_(args.context_gain)
    maps, ratios = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        (scene,) = make_sar_scenes(Path(tmp) / "scenes", n=1, size=(768, 512), progress=False)
        for blend in ("none", "cosine"):
            res = predict_scene(task, scene.dir, Path(tmp) / blend, window_regions=4,
                                overlap_regions=1, blend=blend, progress=False)  # fmt: skip
            with rasterio.open(res.probabilities) as ds:
                maps[blend] = ds.read(2)
            ratios[blend] = seam_ratio(maps[blend], 128)
    print(json.dumps({"seam_ratio": ratios}))
    lo, hi = np.nanpercentile(np.concatenate([m.ravel() for m in maps.values()]), [1, 99])
    fig = plt.figure(figsize=(11, 6.4), constrained_layout=True)
    grid = fig.add_gridspec(2, 2, height_ratios=[2.2, 1])
    titles = {"none": "centre crops (--blend none)", "cosine": "Hann-blended (--blend cosine)"}
    prof = fig.add_subplot(grid[1, :])
    for col, blend in enumerate(("none", "cosine")):
        ax = fig.add_subplot(grid[0, col])
        ax.imshow(maps[blend], cmap="viridis", vmin=lo, vmax=hi)
        ax.set_title(f"{titles[blend]}: seam ratio {ratios[blend]:.2f}")
        ax.set_xticks([])
        ax.set_yticks([])
        profile = np.nanmean(np.abs(np.diff(maps[blend], axis=1)), axis=0)
        prof.plot(np.arange(1, len(profile) + 1), profile, label=titles[blend], lw=1)
    for x in range(128, maps["none"].shape[1], 128):
        prof.axvline(x, color="0.7", lw=0.8, ls="--", zorder=0)
    prof.set_xlabel("column (px); dashed: tile borders")
    prof.set_ylabel("mean |d/dx| over rows")
    prof.legend(loc="upper right", fontsize=8)
    fig.suptitle("Untrained tiny xT (Mamba context), 256-px windows with 64-px overlap")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=80)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
