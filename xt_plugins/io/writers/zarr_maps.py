"""Zarr outputs: a plain array written block by block, and OME-Zarr multiscale maps in microns.

:func:`write_ome_zarr_map` stores a (C, rows, cols) region map as an OME-NGFF image that napari
(``napari-ome-zarr``), ``ome-zarr``'s reader and other NGFF viewers place in micrometres over
the slide. Which NGFF version is written follows the zarr format of the store: zarr v3 (the
project's default, ``zarr`` 3) gets NGFF 0.5 (metadata under the ``ome`` attribute, arrays with
``dimension_names``), zarr v2 gets NGFF 0.4 (``multiscales`` at the top of ``.zattrs``, nested
``/`` chunk keys). Both carry the same ``multiscales`` content, and ``ome-zarr`` 0.21 reads both.

.. versionadded:: 0.1
.. versionchanged:: 0.2
   :func:`write_ome_zarr_map`.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from ._common import PathLike, _BlockWriter, _chw, _prepare_parent

__all__ = ["ZarrWriter", "ome_zarr_levels", "write_ome_zarr_map"]

#: Default channel colours of the ``omero`` block (hex RGB), cycled over channels.
_CHANNEL_COLORS = ("FF0000", "00FF00", "0000FF", "FFFF00", "FF00FF", "00FFFF", "FFFFFF")


class ZarrWriter(_BlockWriter):
    """A zarr (v3) array on disk written block by block; reads back with :class:`ZarrSource`.

    Writes of blocks aligned to ``chunk`` never touch the same chunk, so such writes may run
    in parallel.

    Args:
        path: store directory (``*.zarr``); replaced if it exists.
        shape: (C, H, W) or (H, W) of the whole image.
        dtype: pixel type.
        chunk: spatial chunk side.
        fill_value: value of never-written pixels; NaN for floats by default, else 0.
        nodata: value NaN in float blocks is written as (for integer outputs).

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        path: PathLike,
        shape: Sequence[int],
        dtype: Any,
        chunk: int = 512,
        fill_value: float | None = None,
        nodata: float | None = None,
    ) -> None:
        import zarr

        self.path = _prepare_parent(path)
        self.shape = _chw(shape)
        self.dtype = np.dtype(dtype)
        self.nodata = None if nodata is None else float(nodata)
        if fill_value is None:
            fill_value = float("nan") if np.issubdtype(self.dtype, np.floating) else 0
        c = self.shape[0]
        self.array = zarr.create_array(
            store=str(self.path),
            shape=self.shape,
            chunks=(c, chunk, chunk),
            dtype=self.dtype,
            fill_value=fill_value,
            overwrite=True,
        )

    def write(self, y: int, x: int, block: np.ndarray) -> None:
        """Write ``block`` (C, h, w) (or (h, w) for one band) with its top-left at (y, x)."""
        clipped = self._clip_block(y, x, block)
        if clipped is not None:
            y0, x0, data = clipped
            self.array[:, y0 : y0 + data.shape[1], x0 : x0 + data.shape[2]] = data


# ---------------------------------------------------------------------------- OME-Zarr maps
def _pair(value: float | Sequence[float], what: str) -> tuple[float, float]:
    """A (y, x) pair from one number or two; both positive."""
    if isinstance(value, int | float | np.integer | np.floating):
        pair = (float(value), float(value))
    else:
        items = [float(v) for v in value]
        if len(items) != 2:
            raise ValueError(f"{what} must be one number or a (y, x) pair, got {value!r}")
        pair = (items[0], items[1])
    if not all(np.isfinite(v) and v > 0 for v in pair):
        raise ValueError(f"{what} must be positive, got {value!r}")
    return pair


def _halve(level: np.ndarray) -> np.ndarray:
    """(C, h, w) -> (C, ceil(h/2), ceil(w/2)): 2x2 means, NaN ignored, all-NaN cells NaN."""
    c, h, w = level.shape
    padded = np.full((c, h + h % 2, w + w % 2), np.nan, dtype=level.dtype)
    padded[:, :h, :w] = level
    cells = padded.reshape(c, padded.shape[1] // 2, 2, padded.shape[2] // 2, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "Mean of empty slice" on all-NaN cells
        return np.nanmean(cells, axis=(2, 4)).astype(level.dtype, copy=False)


def ome_zarr_levels(array: np.ndarray) -> list[np.ndarray]:
    """The pyramid of a (C, h, w) float map: level 0 itself, then 2x NaN-aware means.

    Levels halve (rounding up) while either side is above 1 pixel, so the last level is
    (C, 1, 1).

    Args:
        array: (C, h, w) or (h, w) map; integers are converted to float32.

    Returns:
        The levels, finest first, each (C, h_l, w_l).

    .. versionadded:: 0.2
    """
    level = np.asarray(array)
    if level.ndim == 2:
        level = level[None]
    if level.ndim != 3 or 0 in level.shape:
        raise ValueError(f"a map must be (C, rows, cols) with no empty axis, got {level.shape}")
    if level.dtype != np.float64:
        level = level.astype(np.float32, copy=False)
    levels = [level]
    while max(level.shape[1:]) > 1:
        level = _halve(level)
        levels.append(level)
    return levels


def _multiscales(
    name: str,
    num_levels: int,
    pixel_um: tuple[float, float],
    region_size: tuple[float, float],
    mpp: tuple[float, float],
) -> dict[str, Any]:
    datasets = []
    for level in range(num_levels):
        f = 2.0**level
        scale = [1.0, pixel_um[0] * f, pixel_um[1] * f]
        # Pixel-centre convention (as ome-zarr's own writer): level-l pixel 0 covers level-0
        # slide pixels [0, f * region), whose centre is at (f * region - 1) / 2 slide pixels.
        translation = [0.0, (f * region_size[0] - 1.0) / 2.0 * mpp[0]]
        translation.append((f * region_size[1] - 1.0) / 2.0 * mpp[1])
        datasets.append(
            {
                "path": str(level),
                "coordinateTransformations": [
                    {"type": "scale", "scale": scale},
                    {"type": "translation", "translation": translation},
                ],
            }
        )
    return {
        "name": name,
        "axes": [
            {"name": "c", "type": "channel"},
            {"name": "y", "type": "space", "unit": "micrometer"},
            {"name": "x", "type": "space", "unit": "micrometer"},
        ],
        "datasets": datasets,
        "type": "mean",
        "metadata": {
            "description": "2x2 mean per level, NaN (no prediction) ignored",
            "method": "xt_plugins.io.write_ome_zarr_map",
        },
    }


def _omero(channel_names: Sequence[str]) -> dict[str, Any]:
    return {
        "channels": [
            {
                "label": str(label),
                "color": _CHANNEL_COLORS[i % len(_CHANNEL_COLORS)],
                "active": True,
                "window": {"min": 0.0, "max": 1.0, "start": 0.0, "end": 1.0},
            }
            for i, label in enumerate(channel_names)
        ],
        "rdefs": {"model": "color"},
    }


def _open_parent(group_or_path: Any, version: str | None) -> Any:
    """The zarr group the image goes into: an open group, or a store path opened/created."""
    import zarr

    if isinstance(group_or_path, zarr.Group):
        return group_or_path
    path = _prepare_parent(group_or_path)
    if path.exists():
        try:
            return zarr.open_group(str(path), mode="a")
        except Exception as err:
            raise ValueError(
                f"{path}: exists but is not a zarr group; remove it or choose another path"
            ) from err
    return zarr.open_group(str(path), mode="w", zarr_format=2 if version == "0.4" else 3)


def _where(group: Any) -> str:
    """A group's location for messages: the store folder and the path inside it."""
    root = getattr(group.store, "root", None)
    base = str(root) if root is not None else str(group.store)
    return f"{base}/{group.path}".rstrip("/")


def write_ome_zarr_map(
    group_or_path: Any,
    name: str,
    array: np.ndarray,
    mpp_um: float | Sequence[float],
    region_size: float | Sequence[float] = 1.0,
    channel_names: Sequence[str] | None = None,
    *,
    chunk: int = 256,
    version: str | None = None,
    overwrite: bool = True,
) -> Any:
    """Write a (C, rows, cols) region map as an OME-Zarr multiscale image placed in microns.

    The image is the group ``name`` inside ``group_or_path`` (an open ``zarr.Group``, e.g. the
    per-slide ``<stem>.zarr`` of a run, or a store path, created if missing; its other arrays
    and attributes are left alone). Its levels are the map and its 2x NaN-aware means down to
    one pixel (:func:`ome_zarr_levels`); level ``l`` has ``coordinateTransformations`` scale
    ``[1, 2**l * region_size * mpp_um]`` (y, x) in micrometres on axes ``c`` (channel), ``y``,
    ``x`` (space, micrometer), and a translation that puts each map pixel's centre at the centre
    of the slide area it covers (the read image's pixel (0, 0) centred at 0 um). Open it with
    ``ome_zarr.reader.Reader(ome_zarr.io.parse_url(store / name))`` or napari.

    Args:
        group_or_path: zarr group or store path holding the image.
        name: the image group's name inside it (e.g. ``"map"``); replaced if it exists and
            ``overwrite``.
        array: (C, rows, cols) or (rows, cols) map, NaN where there is no prediction; stored
            as float32 (float64 kept).
        mpp_um: microns per pixel of the image the regions were cut from (the slide level
            that was read, e.g. ``SlideSource.mpp``), one number or (y, x).
        region_size: pixels of that image per map pixel (the region side), one number or
            (y, x).
        channel_names: one name per channel, written as ``omero`` channel labels.
        chunk: spatial chunk side of every level.
        version: NGFF version, ``"0.5"`` (zarr v3) or ``"0.4"`` (zarr v2); None to follow the
            group's zarr format (new stores: zarr v3, NGFF 0.5). It must match an existing
            group's format.
        overwrite: replace an existing ``name``; False raises instead.

    Returns:
        The image's zarr group.

    .. versionadded:: 0.2
    """
    if version not in (None, "0.4", "0.5"):
        raise ValueError(f"version must be '0.4' (zarr v2) or '0.5' (zarr v3), got {version!r}")
    if not name or "/" in name.strip("/"):
        raise ValueError(f"name must be one group name such as 'map', got {name!r}")
    mpp = _pair(mpp_um, "mpp_um")
    region = _pair(region_size, "region_size")
    levels = ome_zarr_levels(array)
    c = levels[0].shape[0]
    if channel_names is not None and len(channel_names) != c:
        raise ValueError(f"{len(channel_names)} channel_names for {c} channels")
    parent = _open_parent(group_or_path, version)
    zarr_format = parent.metadata.zarr_format
    where = _where(parent)
    if version is not None and version != ("0.4" if zarr_format == 2 else "0.5"):
        raise ValueError(
            f"{where}: NGFF {version} needs zarr v{2 if version == '0.4' else 3}, the group is "
            f"zarr v{zarr_format}; pass version=None or write to a new store"
        )
    if name in parent:
        if not overwrite:
            raise FileExistsError(f"{where}/{name} exists: pass overwrite=True or another name")
        del parent[name]
    image = parent.create_group(name)
    for i, level in enumerate(levels):
        kwargs: dict[str, Any] = {}
        if zarr_format == 2:
            kwargs["chunk_key_encoding"] = {"name": "v2", "separator": "/"}
        else:
            kwargs["dimension_names"] = ("c", "y", "x")
        arr = image.create_array(
            str(i),
            shape=level.shape,
            chunks=(c, min(chunk, level.shape[1]), min(chunk, level.shape[2])),
            dtype=level.dtype,
            fill_value=float("nan"),
            **kwargs,
        )
        arr[...] = level
    pixel_um = (region[0] * mpp[0], region[1] * mpp[1])
    multiscales = _multiscales(name, len(levels), pixel_um, region, mpp)
    attrs: dict[str, Any] = {"multiscales": [multiscales]}
    if channel_names is not None:
        attrs["omero"] = _omero(channel_names)
    if zarr_format == 2:
        multiscales["version"] = "0.4"
        image.attrs.update(attrs)
    else:
        image.attrs["ome"] = {"version": "0.5", **attrs}
    return image
