"""Heads on top of the xT feature pyramid.

- :class:`ClassifierHead`: image-level classification from pooled features.
- :class:`PyramidDecoder`: FPN-style top-down decoder over strides 4..32, output at stride 4
  (or 2).
- :class:`PointDetector`: any encoder with timm's ``forward_intermediates`` and
  ``feature_info`` (an :class:`~xt_plugins.nn.XTModel` stitches the pyramid over the whole
  image) + decoder + one small conv head per output (``heatmap``, ``vessel``, ``fishing``,
  ``length`` for xView3).
- :func:`gaussian_heatmap`, :func:`heatmap_focal_loss`, :func:`find_peaks`: CenterNet's
  target, loss and decoding; :func:`decode_detections` and :func:`ground_truth_detections`:
  the xView3 detection tables of a batch of point-detector outputs and targets.

.. versionadded:: 0.1
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "ClassifierHead",
    "PointDetector",
    "PyramidDecoder",
    "decode_detections",
    "find_peaks",
    "gaussian_heatmap",
    "ground_truth_detections",
    "heatmap_focal_loss",
    "masked_mean",
]


def masked_mean(feat: Tensor, weight: Tensor | None = None) -> Tensor:
    """Mean of a (B, C, H, W) map over space, optionally weighted by (B, 1, H, W).

    Args:
        feat: feature map.
        weight: non-negative weights (e.g. 1 for valid tokens, 0 for masked regions).

    Returns:
        (B, C) pooled features; a sample whose weights are all zero pools to zeros.
    """
    if weight is None:
        return feat.mean(dim=(-2, -1))
    total = weight.sum(dim=(-2, -1)).clamp_min(1e-6)  # (B, 1)
    return (feat * weight).sum(dim=(-2, -1)) / total


class ClassifierHead(nn.Module):
    """LayerNorm, dropout and a linear classifier over pooled features.

    Args:
        in_features: channels of the pooled features.
        num_classes: outputs; 0 makes the head return the normalised features.
        drop_rate: dropout before the classifier.
    """

    def __init__(self, in_features: int, num_classes: int = 0, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.in_features = in_features
        self.norm = nn.LayerNorm(in_features)
        self.drop = nn.Dropout(drop_rate)
        self.fc: nn.Module = nn.Identity()
        self.reset(num_classes)

    @property
    def num_classes(self) -> int:
        """Number of outputs (0 when the classifier is removed)."""
        return self.fc.out_features if isinstance(self.fc, nn.Linear) else 0

    @property
    def out_features(self) -> int:
        """Width of the output: classes, or the features without a classifier.

        TorchGeo's ``load_state_dict`` reads this from a model's last child.
        """
        return self.num_classes or self.in_features

    def reset(self, num_classes: int) -> None:
        """Replace the classifier with a fresh one of ``num_classes`` outputs (0: none)."""
        self.fc = nn.Linear(self.in_features, num_classes) if num_classes > 0 else nn.Identity()
        if isinstance(self.fc, nn.Linear):
            nn.init.trunc_normal_(self.fc.weight, std=0.02)
            nn.init.zeros_(self.fc.bias)

    def forward(self, pooled: Tensor, pre_logits: bool = False) -> Tensor:
        """Classify pooled (B, C) features (or return them normalised with ``pre_logits``)."""
        x = self.drop(self.norm(pooled))
        return x if pre_logits else self.fc(x)


#: Outputs of the xView3 point detector and their channels.
XVIEW3_HEADS: dict[str, int] = {"heatmap": 1, "vessel": 1, "fishing": 1, "length": 1}


def _norm(channels: int) -> nn.Module:
    """Per-pixel LayerNorm over channels.

    Independent of the batch (batch 1 and DDP behave alike) and of the rest of the image, so
    a window streamed through the decoder gives the same values as the whole image would
    (GroupNorm's spatial statistics would make outputs depend on the window).
    """
    from timm.layers import LayerNorm2d

    return LayerNorm2d(channels)


def _conv_block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), _norm(cout), nn.GELU())


class PyramidDecoder(nn.Module):
    """Top-down decoder: lateral 1x1 convs, upsample-and-add, 3x3 smoothing.

    Args:
        in_channels: channels of each pyramid level, finest first (e.g. strides 4..32).
        channels: decoder width.
        out_stride: 4 (the finest level) or 2 (one more upsampling step).

    .. versionadded:: 0.1
    """

    def __init__(self, in_channels: Sequence[int], channels: int = 64, out_stride: int = 4):
        super().__init__()
        if out_stride not in (2, 4):
            raise ValueError(f"out_stride must be 2 or 4, got {out_stride}")
        self.out_stride = out_stride
        self.channels = channels
        self.lateral = nn.ModuleList(nn.Conv2d(c, channels, 1) for c in in_channels)
        self.smooth = nn.ModuleList(_conv_block(channels, channels) for _ in in_channels[:-1])
        self.refine = _conv_block(channels, channels) if out_stride == 2 else None

    def forward(self, feats: Sequence[Tensor], size: tuple[int, int] | None = None) -> Tensor:
        """Decode a pyramid.

        Args:
            feats: (B, C_i, H_i, W_i) maps, finest first.
            size: output (h, w) (default: the finest map's size, or twice it at stride 2).

        Returns:
            (B, channels, h, w).
        """
        if len(feats) != len(self.lateral):
            raise ValueError(f"expected {len(self.lateral)} pyramid levels, got {len(feats)}")
        x = self.lateral[-1](feats[-1])
        for i in range(len(feats) - 2, -1, -1):
            lat = self.lateral[i](feats[i])
            x = lat + F.interpolate(x, size=lat.shape[-2:], mode="nearest")
            x = self.smooth[i](x)
        if self.refine is not None:
            target = size or (2 * x.shape[-2], 2 * x.shape[-1])
            x = self.refine(F.interpolate(x, size=target, mode="bilinear", align_corners=False))
        elif size is not None and tuple(x.shape[-2:]) != tuple(size):
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        return x


class PointDetector(nn.Module):
    """Encoder pyramid -> :class:`PyramidDecoder` -> one conv head per output.

    Args:
        encoder: a model with ``forward_intermediates(x, intermediates_only=True)`` returning
            maps at strides 4, 8, 16, 32 and ``feature_info`` (list of dicts with ``num_chs``).
        heads: output name -> channels (default: xView3's ``heatmap``, ``vessel``,
            ``fishing``, ``length``).
        decoder_channels: decoder width.
        out_stride: 4 or 2.
        heatmap_prior: initial heatmap probability (CenterNet's bias trick).
        init_bias: initial output bias of other heads (e.g. ``{"length": log(60)}``).

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        encoder: nn.Module,
        heads: Mapping[str, int] | None = None,
        decoder_channels: int = 64,
        out_stride: int = 4,
        heatmap_prior: float = 0.01,
        init_bias: Mapping[str, float] | None = None,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        info = encoder.feature_info
        channels = [f["num_chs"] for f in info] if isinstance(info, list) else info.channels()
        self.decoder = PyramidDecoder(channels, decoder_channels, out_stride)
        self.out_stride = out_stride
        heads = dict(XVIEW3_HEADS if heads is None else heads)
        self.heads = nn.ModuleDict(
            {
                name: nn.Sequential(
                    nn.Conv2d(decoder_channels, decoder_channels, 3, padding=1),
                    nn.GELU(),
                    nn.Conv2d(decoder_channels, n, 1),
                )
                for name, n in heads.items()
            }
        )
        bias = {"heatmap": -math.log((1 - heatmap_prior) / heatmap_prior), **(init_bias or {})}
        for name, value in bias.items():
            if name in self.heads:
                nn.init.constant_(self.heads[name][-1].bias, value)

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """(h, w) of the outputs for an ``height x width`` input."""
        return math.ceil(height / self.out_stride), math.ceil(width / self.out_stride)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """Dense outputs (raw logits / regressions).

        Args:
            x: (B, C, H, W).

        Returns:
            name -> (B, n, ceil(H / out_stride), ceil(W / out_stride)).
        """
        feats = self.encoder.forward_intermediates(x, intermediates_only=True)
        y = self.decoder(feats, self.output_size(*x.shape[-2:]))
        return {name: head(y) for name, head in self.heads.items()}


# ---------------------------------------------------------------------------- targets / loss
def gaussian_heatmap(
    centers: np.ndarray, shape: tuple[int, int], sigma: float | np.ndarray = 1.5
) -> np.ndarray:
    """CenterNet target: a Gaussian per centre (max where they overlap), exactly 1 at centres.

    Args:
        centers: (N, 2) (row, col) cell indices on the output grid (floats are floored).
        shape: (h, w) of the output grid.
        sigma: Gaussian width in cells (one value, or one per centre).

    Returns:
        (h, w) float32 in [0, 1].
    """
    h, w = shape
    out = np.zeros((h, w), dtype=np.float32)
    centers = np.floor(np.asarray(centers, dtype=np.float64).reshape(-1, 2)).astype(np.int64)
    sigmas = np.broadcast_to(np.asarray(sigma, dtype=np.float64), (len(centers),))
    for (r, c), s in zip(centers, sigmas, strict=True):
        if not (0 <= r < h and 0 <= c < w):
            continue
        rad = max(1, int(math.ceil(3 * s)))
        r0, r1, c0, c1 = max(0, r - rad), min(h, r + rad + 1), max(0, c - rad), min(w, c + rad + 1)
        dy = np.arange(r0, r1)[:, None] - r
        dx = np.arange(c0, c1)[None, :] - c
        g = np.exp(-(dy**2 + dx**2) / (2 * s * s)).astype(np.float32)
        np.maximum(out[r0:r1, c0:c1], g, out=out[r0:r1, c0:c1])
    return out


def heatmap_focal_loss(
    logits: Tensor, target: Tensor, alpha: float = 2.0, beta: float = 4.0
) -> Tensor:
    """CenterNet's penalty-reduced focal loss on a Gaussian heatmap.

    Args:
        logits: (B, 1, h, w) heatmap logits.
        target: (B, 1, h, w) Gaussian target, 1 exactly at centres.
        alpha: focusing exponent.
        beta: penalty reduction near centres.

    Returns:
        Scalar loss, normalised by the number of centres (at least 1).
    """
    target = target.to(logits.dtype)
    pos = target >= 1.0 - 1e-6
    log_p = F.logsigmoid(logits)
    log_not_p = F.logsigmoid(-logits)
    p = log_p.exp()
    pos_loss = (log_p * (1 - p).pow(alpha))[pos].sum()
    neg_loss = (log_not_p * p.pow(alpha) * (1 - target).pow(beta))[~pos].sum()
    return -(pos_loss + neg_loss) / pos.sum().clamp_min(1)


def find_peaks(
    heatmap: Tensor, threshold: float = 0.5, kernel: int = 3, max_peaks: int = 1000
) -> list[tuple[Tensor, Tensor, Tensor]]:
    """Local maxima of a probability heatmap above ``threshold`` (max-pool NMS).

    Args:
        heatmap: (B, 1, h, w) or (B, h, w) probabilities.
        threshold: smallest peak score.
        kernel: NMS window (odd).
        max_peaks: keep at most this many peaks per image (highest scores).

    Returns:
        Per image ``(rows, cols, scores)`` on the heatmap grid.
    """
    if heatmap.ndim == 3:
        heatmap = heatmap[:, None]
    pooled = F.max_pool2d(heatmap, kernel, stride=1, padding=kernel // 2)
    is_peak = (heatmap == pooled) & (heatmap >= threshold)
    out = []
    for b in range(heatmap.shape[0]):
        rows, cols = torch.nonzero(is_peak[b, 0], as_tuple=True)
        scores = heatmap[b, 0, rows, cols]
        if scores.numel() > max_peaks:
            top = scores.topk(max_peaks).indices
            rows, cols, scores = rows[top], cols[top], scores[top]
        out.append((rows, cols, scores))
    return out


# ---------------------------------------------------------------------------- detection tables
def decode_detections(
    outputs: Mapping[str, Tensor],
    out_stride: int,
    pixel_size: Sequence[float] | Tensor,
    threshold: float = 0.3,
    kernel: int = 3,
    valid: Tensor | None = None,
) -> list[dict[str, Tensor]]:
    """Detections of a batch of detector outputs, in window pixels and metres.

    Args:
        outputs: ``heatmap``, ``vessel``, ``fishing`` (logits) and ``length`` (log metres),
            each (B, 1, h, w).
        out_stride: input pixels per output cell.
        pixel_size: metres per pixel of each image (B,).
        threshold: smallest centre probability.
        kernel: NMS window in cells.
        valid: optional (B, 1, H, W) input validity; peaks on cells without data are dropped.

    Returns:
        Per image a dict of (N,) tensors: ``row``, ``col`` (input pixels, cell centres),
        ``detect_x``, ``detect_y`` (metres from the window's top-left corner; y grows down),
        ``score``, ``vessel_prob``, ``fishing_prob``, ``is_vessel``, ``is_fishing``,
        ``vessel_length_m``.
    """
    heat = outputs["heatmap"].detach().float().sigmoid()
    if valid is not None:
        cells = F.adaptive_max_pool2d(valid.float(), heat.shape[-2:])
        heat = heat * (cells > 0)
    vessel = outputs["vessel"].detach().float().sigmoid()[:, 0]
    fishing = outputs["fishing"].detach().float().sigmoid()[:, 0]
    length = outputs["length"].detach().float()[:, 0].clamp(-10, 10).exp()
    out = []
    for b, (rows, cols, scores) in enumerate(find_peaks(heat, threshold, kernel)):
        ps = float(pixel_size[b])
        r_px = (rows.float() + 0.5) * out_stride
        c_px = (cols.float() + 0.5) * out_stride
        vp, fp = vessel[b, rows, cols], fishing[b, rows, cols]
        out.append(
            {
                "row": r_px,
                "col": c_px,
                "detect_x": c_px * ps,
                "detect_y": r_px * ps,
                "score": scores,
                "vessel_prob": vp,
                "fishing_prob": fp,
                "is_vessel": (vp > 0.5).float(),
                "is_fishing": ((fp > 0.5) & (vp > 0.5)).float(),
                "vessel_length_m": length[b, rows, cols],
            }
        )
    return out


def ground_truth_detections(
    batch: Mapping[str, Tensor], out_stride: int, pixel_size: Sequence[float] | Tensor
) -> list[dict[str, Tensor]]:
    """Ground-truth tables of a batch of detection targets (centres where ``heatmap == 1``)."""
    out = []
    for b in range(batch["heatmap"].shape[0]):
        rows, cols = torch.nonzero(batch["heatmap"][b, 0] >= 1.0 - 1e-6, as_tuple=True)
        ps = float(pixel_size[b])

        def value(key: str, rows: Tensor = rows, cols: Tensor = cols, b: int = b) -> Tensor:
            v = batch[key][b, rows, cols].float()
            return torch.where(v < 0, torch.full_like(v, float("nan")), v)

        out.append(
            {
                "detect_x": (cols.float() + 0.5) * out_stride * ps,
                "detect_y": (rows.float() + 0.5) * out_stride * ps,
                "is_vessel": value("vessel"),
                "is_fishing": value("fishing"),
                "vessel_length_m": value("length"),
                "distance_from_shore_km": value("shore"),
            }
        )
    return out
