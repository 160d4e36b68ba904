"""Nested tokenization: cut an image of any height x width into a grid of regions.

The grid covers the image with ``rows x cols`` regions of ``region x region`` pixels,
``rows = ceil(H / region)``; the bottom and right border regions are zero-padded. Each region
knows its (row, col) and how much of it is real image. Features computed per region are
stitched back onto the image grid and cropped to ``ceil(H / stride) x ceil(W / stride)``.

.. versionadded:: 0.1
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["RegionGrid"]


@dataclass(frozen=True)
class RegionGrid:
    """Geometry of the region grid over an ``height x width`` image.

    Args:
        height: image height in pixels.
        width: image width in pixels.
        region: region side in pixels.

    Raises:
        ValueError: if a size is not positive.
    """

    height: int
    width: int
    region: int

    def __post_init__(self) -> None:
        if self.height <= 0 or self.width <= 0:
            raise ValueError(f"image size must be positive, got {self.height} x {self.width}")
        if self.region <= 0:
            raise ValueError(f"region size must be positive, got {self.region}")

    @property
    def rows(self) -> int:
        """Number of region rows (``ceil(height / region)``)."""
        return math.ceil(self.height / self.region)

    @property
    def cols(self) -> int:
        """Number of region columns (``ceil(width / region)``)."""
        return math.ceil(self.width / self.region)

    @property
    def num_regions(self) -> int:
        """Regions in the grid, ``rows * cols``."""
        return self.rows * self.cols

    @property
    def padded_size(self) -> tuple[int, int]:
        """(height, width) of the padded image that the grid covers exactly."""
        return self.rows * self.region, self.cols * self.region

    def coords(self, device: torch.device | str | None = None) -> Tensor:
        """(row, col) of every region in scan (row-major) order.

        Returns:
            (R, 2) long tensor.
        """
        rr, cc = torch.meshgrid(
            torch.arange(self.rows, device=device),
            torch.arange(self.cols, device=device),
            indexing="ij",
        )
        return torch.stack([rr.flatten(), cc.flatten()], dim=1)

    def region_box(self, index: int) -> tuple[int, int, int, int]:
        """Pixel box ``(y, x, h, w)`` of region ``index`` clipped to the image."""
        r, c = divmod(index, self.cols)
        y, x = r * self.region, c * self.region
        return y, x, min(self.region, self.height - y), min(self.region, self.width - x)

    def valid_fraction(self) -> Tensor:
        """Fraction of each region's pixels that lie inside the image (the rest is padding).

        Returns:
            (R,) float tensor in (0, 1].
        """
        hs = torch.tensor(
            [min(self.region, self.height - r * self.region) for r in range(self.rows)]
        )
        ws = torch.tensor(
            [min(self.region, self.width - c * self.region) for c in range(self.cols)]
        )
        return (hs[:, None] * ws[None, :]).flatten().float() / float(self.region**2)

    def token_coords(
        self, tokens_per_side: int, device: torch.device | str | None = None
    ) -> Tensor:
        """Global (row, col) of each context token when every region gives k x k tokens.

        Tokens are ordered region by region (scan order), and row-major inside a region.

        Args:
            tokens_per_side: k, tokens per region side.
            device: where to put the result.

        Returns:
            (R * k * k, 2) long tensor of positions on the global token grid.
        """
        k = tokens_per_side
        reg = self.coords(device) * k  # (R, 2)
        ii, jj = torch.meshgrid(
            torch.arange(k, device=device), torch.arange(k, device=device), indexing="ij"
        )
        local = torch.stack([ii.flatten(), jj.flatten()], dim=1)  # (k*k, 2)
        return (reg[:, None, :] + local[None, :, :]).reshape(-1, 2)

    def pad(self, x: Tensor) -> Tensor:
        """Zero-pad (B, C, H, W) at the bottom and right to the padded grid size."""
        self._check_image(x)
        ph, pw = self.padded_size
        return F.pad(x, (0, pw - self.width, 0, ph - self.height))

    def nest(self, x: Tensor) -> Tensor:
        """Split (B, C, H, W) into regions.

        Returns:
            (B * R, C, region, region), image-major then scan order.
        """
        b, c = x.shape[:2]
        r = self.region
        x = self.pad(x)  # (B, C, rows*r, cols*r)
        x = x.reshape(b, c, self.rows, r, self.cols, r).permute(0, 2, 4, 1, 3, 5)
        return x.reshape(b * self.num_regions, c, r, r)

    def unnest(self, feats: Tensor, batch: int, crop_stride: int | None = None) -> Tensor:
        """Stitch per-region feature maps back onto the image grid.

        Args:
            feats: (B * R, C, h, w) per-region maps (any stride, h = w = region / stride).
            batch: B.
            crop_stride: if given, crop to ``ceil(H / s) x ceil(W / s)`` (drop pure padding).

        Returns:
            (B, C, rows * h, cols * w), or the cropped map.
        """
        n, c, h, w = feats.shape
        if n != batch * self.num_regions:
            raise ValueError(
                f"expected {batch * self.num_regions} region maps for batch {batch} on a "
                f"{self.rows} x {self.cols} grid, got {n}"
            )
        out = feats.reshape(batch, self.rows, self.cols, c, h, w).permute(0, 3, 1, 4, 2, 5)
        out = out.reshape(batch, c, self.rows * h, self.cols * w)
        if crop_stride is not None:
            out = out[
                ..., : math.ceil(self.height / crop_stride), : math.ceil(self.width / crop_stride)
            ]
        return out

    def _check_image(self, x: Tensor) -> None:
        if x.ndim != 4 or x.shape[-2:] != (self.height, self.width):
            raise ValueError(
                f"expected an image (B, C, {self.height}, {self.width}), got {tuple(x.shape)}"
            )
