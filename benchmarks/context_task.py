"""Does context matter? Train the same xT model with each context encoder on a task that needs it.

The task (``xt_plugins.data.context_task``): a small circle and a small square sit in two regions
of different columns of a textured image; the label is 1 when the circle is left of the square.
No single region decides it, and a bag of region features (``none``: region encoder + position-
free mean pooling) provably cannot: swapping the two marked regions keeps the multiset of region
tiles and flips the label. A context encoder has to relate the two regions' positions.

Recipe, identical for every context encoder (same seeds, same data, same step budget):

1. Region-encoder warm start (once, shared): the tiny ConvNeXt learns what is *in* a region
   (background / circle / square) from single-region crops of images with a separate seed. This
   stands in for the ImageNet-pretrained region encoders xT always starts from; it carries no
   information about where regions are, so ``none`` stays at chance. Without it the context
   encoders do not learn the task in a CPU budget (hyper from scratch: still 0.50 after 1,500
   steps): a second-order signal through an untrained region encoder.
2. Every context encoder, in a fresh subprocess: the full xT model (region encoder + context +
   head) is trained end to end on whole images for ``--steps`` steps; AdamW, the region encoder
   at 0.1 x the learning rate (at full rate it collapses to a constant while the context encoder
   is still searching, and nothing is learned), warm-up + cosine, gradient clipping.
3. Held-out accuracy on images of another seed; parameters; training seconds; peak RSS.

    python benchmarks/context_task.py                  # 128^2 images, 32-px regions, ~5 min
    python benchmarks/context_task.py --size 256 --steps 600     # 8 x 8 regions, much longer

Target (issue 6): every context encoder >= 0.90 held-out accuracy, ``none`` <= 0.60.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

CONTEXTS = ("none", "txl", "hyper", "mamba")


@dataclass
class Config:
    """Everything that defines one run (shared by all context encoders)."""

    size: tuple[int, int] = (128, 128)  # (height, width): a 4 x 4 grid of 32-px regions
    region: int = 32
    mark_size: int = 16  # circle diameter / square side: half a region, 1/8 of the image
    steps: int = 300
    batch: int = 32
    lr: float = 1e-3
    region_lr_scale: float = 0.1
    weight_decay: float = 0.05
    warmup: int = 20
    pretrain_steps: int = 60
    pretrain_batch: int = 32  # images per warm-start step (3 crops each)
    pretrain_lr: float = 2e-3
    test_size: int = 512
    eval_every: int = 50
    seed: int = 0  # training images; held-out = seed + 1, warm start = seed + 2
    context_dim: int = 64
    depth: int = 2
    d_state: int = 8
    threads: int = 1
    backbone: dict[str, Any] = field(
        default_factory=lambda: dict(dims=(24, 48, 96, 192), depths=(1, 1, 1, 1))
    )

    @property
    def grid(self) -> tuple[int, int]:
        return self.size[0] // self.region, self.size[1] // self.region


def _dataset(cfg: Config, length: int, seed: int):
    from xt_plugins.data.context_task import ContextTaskDataset

    return ContextTaskDataset(
        length,
        seed=seed,
        size=cfg.size,
        region=cfg.region,
        mark_size=cfg.mark_size,
        normalize=True,
    )


def _batch(ds, indices) -> tuple[Any, Any]:
    import torch

    items = [ds[i] for i in indices]
    return torch.stack([x for x, _ in items]), torch.tensor([y for _, y in items])


def build_model(context: str, cfg: Config, region_weights: str | Path | None = None):
    """The tiny xT model: ConvNeXt regions, 1 context token per region, 2 classes."""
    import torch

    import xt_plugins

    rows, cols = cfg.grid
    torch.manual_seed(cfg.seed)
    model = xt_plugins.create_model(
        "convnext_tiny",
        context,
        region_size=cfg.region,
        num_classes=2,
        context_pool=1,
        context_dim=cfg.context_dim,
        # txl: one row of regions per segment, memory covering the whole sequence;
        # mamba: chunk_size only sets the speed of the pure-PyTorch scan.
        context_kwargs=dict(
            depth=cfg.depth,
            segment_len=cols,
            mem_len=rows * cols,
            d_state=cfg.d_state,
            chunk_size=16,
        ),
        pretrained_region=region_weights,
        **cfg.backbone,
    )
    return model


def pretrain_region_encoder(cfg: Config, out: Path) -> dict[str, Any]:
    """Warm-start the region encoder on single regions: background / circle / square.

    Crops come from images of seed ``cfg.seed + 2`` (never used for training or testing): the
    circle's region, the square's region and one background region per image. Saves the
    backbone's state dict to ``out``.
    """
    import torch
    import torch.nn.functional as F

    from xt_plugins.data.context_task import (
        TEXTURE_MEAN,
        TEXTURE_STD,
        render_context_task,
        sample_context_task,
    )

    torch.set_num_threads(cfg.threads)
    model = build_model("none", cfg)
    encoder = model.region_encoder
    probe = torch.nn.Linear(encoder.channels[-1], 3)
    opt = torch.optim.AdamW(
        [*encoder.parameters(), *probe.parameters()], lr=cfg.pretrain_lr, weight_decay=0.05
    )
    grid = model.grid_for(*cfg.size)
    t0 = time.perf_counter()
    accs = []
    for step in range(cfg.pretrain_steps):
        crops, labels = [], []
        for i in range(step * cfg.pretrain_batch, (step + 1) * cfg.pretrain_batch):
            spec = sample_context_task(cfg.seed + 2, i, cfg.size, cfg.region, cfg.mark_size)
            image = (render_context_task(spec) - TEXTURE_MEAN) / TEXTURE_STD
            regions = grid.nest(torch.from_numpy(image)[None])  # (R, 3, r, r)
            marked = [r * grid.cols + c for r, c in map(spec.region_of, (spec.circle, spec.square))]
            background = [k for k in range(grid.num_regions) if k not in marked]
            picks = [*marked, background[i % len(background)]]
            crops.append(regions[picks])
            labels += [1, 2, 0]
        x, y = torch.cat(crops), torch.tensor(labels)
        logits = probe(encoder(x)[-1].mean((2, 3)))
        loss = F.cross_entropy(logits, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        accs.append((logits.argmax(1) == y).float().mean().item())
    torch.save(encoder.backbone.state_dict(), out)
    return {
        "seconds": time.perf_counter() - t0,
        "region_accuracy_last10": sum(accs[-10:]) / len(accs[-10:]),
        "peak_rss_mb": _common.peak_rss_mb(),
    }


def evaluate(model, cfg: Config, length: int | None = None) -> float:
    """Held-out accuracy on images of seed ``cfg.seed + 1`` (rendered on the fly)."""
    import torch

    ds = _dataset(cfg, length or cfg.test_size, cfg.seed + 1)
    was_training = model.training
    model.eval()
    correct = 0
    with torch.inference_mode():
        for start in range(0, len(ds), 64):
            x, y = _batch(ds, range(start, min(start + 64, len(ds))))
            correct += (model(x).argmax(1) == y).sum().item()
    model.train(was_training)
    return correct / len(ds)


def train_context(context: str, cfg: Config, region_weights: str | Path | None) -> dict[str, Any]:
    """Train the xT model with ``context`` end to end; held-out accuracy and costs."""
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(cfg.threads)
    model = build_model(context, cfg, region_weights).train()
    params = sum(p.numel() for p in model.parameters())
    baseline_rss = _common.peak_rss_mb()
    region = list(model.region_encoder.parameters())
    region_ids = {id(p) for p in region}
    rest = [p for p in model.parameters() if id(p) not in region_ids]
    opt = torch.optim.AdamW(
        [{"params": region, "lr": cfg.lr * cfg.region_lr_scale}, {"params": rest, "lr": cfg.lr}],
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
    )

    def schedule(step: int) -> float:
        warm = min(1.0, (step + 1) / max(cfg.warmup, 1))
        return warm * 0.5 * (1.0 + math.cos(math.pi * step / cfg.steps))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    train = _dataset(cfg, cfg.steps * cfg.batch, cfg.seed)
    losses, curve, train_seconds = [], [], 0.0
    for step in range(cfg.steps):
        t0 = time.perf_counter()
        # Consecutive indices: the same images in the same order for every context encoder,
        # and every batch exactly balanced (labels alternate with the index).
        x, y = _batch(train, range(step * cfg.batch, (step + 1) * cfg.batch))
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        train_seconds += time.perf_counter() - t0
        losses.append(loss.item())
        if cfg.eval_every and (step + 1) % cfg.eval_every == 0 and step + 1 < cfg.steps:
            curve.append([step + 1, evaluate(model, cfg, min(cfg.test_size, 256))])
    t0 = time.perf_counter()
    accuracy = evaluate(model, cfg)
    curve.append([cfg.steps, accuracy])
    tail = losses[-20:]
    return {
        "accuracy": accuracy,
        "params": params,
        "train_seconds": train_seconds,
        "peak_rss_mb": _common.peak_rss_mb(),
        "baseline_rss_mb": baseline_rss,
        "eval_seconds": time.perf_counter() - t0,
        "final_train_loss": sum(tail) / len(tail),
        "curve": curve,
    }


# ---------------------------------------------------------------------------- driver
def _child(args: argparse.Namespace) -> None:
    cfg = Config(**json.loads(args.config))
    cfg.size = tuple(cfg.size)
    if args.child == "pretrain":
        out = pretrain_region_encoder(cfg, Path(args.weights))
    else:
        out = train_context(args.child, cfg, args.weights)
    print(json.dumps({"ok": True, **out}))


def _plot(results: dict[str, Any], cfg: Config, name: str, out: Path | None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [c for c in CONTEXTS if c in results and "accuracy" in results[c]]
    colors = {"none": "#888", "txl": "#37a", "hyper": "#d83", "mamba": "#2a7"}
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    accs = [results[c]["accuracy"] for c in names]
    bars = ax.bar(names, accs, color=[colors[c] for c in names])
    for bar, c in zip(bars, names, strict=True):
        r = results[c]
        ax.text(
            bar.get_x() + bar.get_width() / 2,
            bar.get_height() + 0.01,
            f"{r['accuracy']:.3f}\n{r['params'] / 1e3:.0f}k params\n{r['train_seconds']:.0f} s, "
            f"{r['peak_rss_mb']:.0f} MB",
            ha="center",
            va="bottom",
            fontsize=8,
        )
    ax.axhline(0.5, color="k", lw=0.8, ls=":", label="chance")
    ax.axhline(0.9, color="#2a7", lw=0.8, ls="--", label="target (context) 0.90")
    ax.axhline(0.6, color="#888", lw=0.8, ls="--", label="limit (none) 0.60")
    ax.set_ylim(0, 1.25)
    ax.set_ylabel("held-out accuracy")
    h, w = cfg.size
    ax.set_title(f"circle left of square? {h}x{w} px, {cfg.grid[0]}x{cfg.grid[1]} regions")
    ax.legend(loc="upper left", fontsize=7)
    for c in names:
        steps, acc = zip(*results[c]["curve"], strict=True)
        ax2.plot(steps, acc, marker="o", ms=3, color=colors[c], label=c)
    ax2.axhline(0.5, color="k", lw=0.8, ls=":")
    ax2.set_xlabel("training step")
    ax2.set_ylabel("held-out accuracy")
    ax2.set_ylim(0.3, 1.02)
    ax2.set_title(f"same data and {cfg.steps} steps x {cfg.batch} images for all")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    path = _common.figure_path(name, out)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    d = Config()
    p.add_argument("--size", type=int, nargs="+", default=list(d.size), help="H [W] in pixels")
    p.add_argument("--region", type=int, default=d.region)
    p.add_argument("--mark-size", type=int, default=d.mark_size)
    p.add_argument("--steps", type=int, default=d.steps)
    p.add_argument("--batch", type=int, default=d.batch)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--pretrain-steps", type=int, default=d.pretrain_steps)
    p.add_argument("--test-size", type=int, default=d.test_size)
    p.add_argument("--eval-every", type=int, default=d.eval_every)
    p.add_argument("--contexts", nargs="+", default=list(CONTEXTS), choices=CONTEXTS)
    p.add_argument("--threads", type=int, default=d.threads)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--name", default="context_task", help="results file stem")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--config", default=None, help=argparse.SUPPRESS)
    p.add_argument("--weights", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        _child(args)
        return

    size = tuple(args.size) if len(args.size) == 2 else (args.size[0], args.size[0])
    cfg = dataclasses.replace(
        d,
        size=size,
        region=args.region,
        mark_size=args.mark_size,
        steps=args.steps,
        batch=args.batch,
        lr=args.lr,
        pretrain_steps=args.pretrain_steps,
        test_size=args.test_size,
        eval_every=args.eval_every,
        threads=args.threads,
        seed=args.seed,
    )
    cfg_json = json.dumps(dataclasses.asdict(cfg))
    script = str(Path(__file__).resolve())
    workdir = Path(tempfile.mkdtemp(prefix="xt_ctx_task_"))
    weights = workdir / "region_warm_start.pt"
    print(
        f"{size[0]}x{size[1]} px, {cfg.grid[0]}x{cfg.grid[1]} regions of {cfg.region} px, "
        f"marks {cfg.mark_size} px; {cfg.steps} steps x {cfg.batch} images; "
        f"{cfg.threads} threads",
        flush=True,
    )
    pre = _common.run_child(
        [script, "--child", "pretrain", "--config", cfg_json, "--weights", str(weights)]
    )
    if not pre.get("ok"):
        raise SystemExit(f"region warm start failed: {pre}")
    print(
        f"region warm start: {pre['seconds']:.0f} s, region accuracy "
        f"{pre['region_accuracy_last10']:.2f}",
        flush=True,
    )
    results: dict[str, Any] = {}
    for context in args.contexts:
        r = _common.run_child(
            [script, "--child", context, "--config", cfg_json, "--weights", str(weights)]
        )
        r.pop("ok", None)
        results[context] = r
        if "accuracy" in r:
            print(
                f"{context:>5}: accuracy {r['accuracy']:.3f}  params {r['params']:,}  "
                f"train {r['train_seconds']:.0f} s  peak RSS {r['peak_rss_mb']:.0f} MB  "
                f"curve {[round(a, 2) for _, a in r['curve']]}",
                flush=True,
            )
        else:
            print(f"{context:>5}: FAILED {r}", flush=True)
    ok_ctx = all(results[c].get("accuracy", 0) >= 0.9 for c in results if c != "none")
    ok_none = results.get("none", {}).get("accuracy", 0.5) <= 0.6
    print(f"target: context encoders >= 0.90: {ok_ctx}; none <= 0.60: {ok_none}")
    meta = {
        "config": dataclasses.asdict(cfg),
        "region_warm_start": pre,
        "targets_met": {"context_ge_0.90": ok_ctx, "none_le_0.60": ok_none},
        "command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "notes": (
            "held-out accuracy on cfg.test_size images of seed+1; train_seconds excludes "
            "evaluation; peak_rss_mb is ru_maxrss of a fresh process per context encoder, "
            "baseline_rss_mb the same after imports and model construction"
        ),
    }
    _common.save(args.name, {**results, "_meta": meta}, args.out)
    print(f"wrote {_plot(results, cfg, args.name, args.out)}")


if __name__ == "__main__":
    main()
