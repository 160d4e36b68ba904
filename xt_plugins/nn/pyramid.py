"""ViTDet's simple feature pyramid: strides 4, 8, 16 and 32 from one stride-16 map.

A plain ViT (UNI, Virchow2, H-optimus-0, Prov-GigaPath's tile encoder, DINOv2, ...) has a
single token map at the patch stride. Dense heads and smp ``tu-`` encoders expect a CNN-like
pyramid, so, as ViTDet does (Li et al., "Exploring Plain Vision Transformer Backbones for
Object Detection", arXiv:2203.16527, section 3), the stride-16 map is upsampled with transposed
convolutions for strides 4 and 8, kept as it is for 16 and max-pooled for 32.

The stride-16 and stride-32 levels carry the pretrained features untouched (identity and a
parameter-free pool) unless ``out_dim`` asks for ViTDet's output convolutions: the classifier
and the context encoder, which read the last level, then start from the foundation model's own
features rather than from a randomly initialised projection of them.

.. versionadded:: 0.2
"""

from __future__ import annotations

from timm.layers import LayerNorm2d
from torch import Tensor, nn

__all__ = ["SimpleFeaturePyramid"]

#: Output strides of the four levels, relative to the image.
PYRAMID_STRIDES: tuple[int, int, int, int] = (4, 8, 16, 32)


def _output_conv(in_dim: int, out_dim: int) -> nn.Sequential:
    """ViTDet's per-level output: 1x1 conv + LN, 3x3 conv + LN (convs without bias)."""
    return nn.Sequential(
        nn.Conv2d(in_dim, out_dim, 1, bias=False),
        LayerNorm2d(out_dim),
        nn.Conv2d(out_dim, out_dim, 3, padding=1, bias=False),
        LayerNorm2d(out_dim),
    )


class SimpleFeaturePyramid(nn.Module):
    """Four levels (strides 4, 8, 16, 32) from one stride-16 map, as ViTDet builds them.

    Level widths are ``dim / 4, dim / 2, dim, dim`` (or ``out_dim`` for every level when given).

    Args:
        dim: channels of the stride-16 map (the ViT's embedding width).
        out_dim: if given, add ViTDet's output convolutions so every level has ``out_dim``
            channels (ViTDet uses 256); None keeps the levels' natural widths and leaves the
            stride-16 and stride-32 levels parameter-free.

    .. versionadded:: 0.2
    """

    def __init__(self, dim: int, out_dim: int | None = None) -> None:
        super().__init__()
        if dim % 4:
            raise ValueError(f"SimpleFeaturePyramid needs dim divisible by 4, got {dim}")
        self.up4 = nn.Sequential(
            nn.ConvTranspose2d(dim, dim // 2, 2, stride=2),
            LayerNorm2d(dim // 2),
            nn.GELU(),
            nn.ConvTranspose2d(dim // 2, dim // 4, 2, stride=2),
        )
        self.up8 = nn.ConvTranspose2d(dim, dim // 2, 2, stride=2)
        self.keep16 = nn.Identity()
        self.down32 = nn.MaxPool2d(2)
        widths = [dim // 4, dim // 2, dim, dim]
        if out_dim is None:
            self.out: nn.ModuleList | None = None
            self.channels: list[int] = widths
        else:
            self.out = nn.ModuleList(_output_conv(w, out_dim) for w in widths)
            self.channels = [out_dim] * 4
        self.strides: list[int] = list(PYRAMID_STRIDES)

    def forward(self, x: Tensor) -> list[Tensor]:
        """Build the pyramid.

        Args:
            x: (N, dim, h, w) stride-16 map.

        Returns:
            [(N, C0, 4h, 4w), (N, C1, 2h, 2w), (N, C2, h, w), (N, C3, h // 2, w // 2)].
        """
        levels = [self.up4(x), self.up8(x), self.keep16(x), self.down32(x)]
        if self.out is not None:
            levels = [conv(f) for conv, f in zip(self.out, levels, strict=True)]
        return levels
