"""Slides for MONAI: opening a slide at a target mpp, and data lists of folders of slides.

.. versionadded:: 0.2
   Moved here from ``xt_plugins.monai.wsi`` (still importable there).
"""

from __future__ import annotations

import csv
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..io import SLIDE_SUFFIXES, SlideSource

__all__ = ["FOLDER_SUFFIXES", "MAX_UPSAMPLE", "open_slide", "read_slide_data", "slide_collate"]

#: A slide whose level-0 mpp is coarser than the target by more than this factor is refused
#: (the model would see blown-up pixels); pass ``slide_mpp`` if the recorded mpp is wrong.
MAX_UPSAMPLE = 2.0
#: Files a folder of slides is searched for (pyramidal TIFFs included).
FOLDER_SUFFIXES = frozenset(SLIDE_SUFFIXES | {".tif", ".tiff"})


# ---------------------------------------------------------------------------- slides
def open_slide(
    path: str | os.PathLike[str],
    *,
    mpp: float = 0.5,
    slide_mpp: float | None = None,
    mpp_tolerance: float = 0.1,
) -> SlideSource:
    """Open a slide at a target resolution, refusing resolutions the slide does not have.

    The level within ``mpp_tolerance`` of ``mpp`` is read as is; otherwise the next finer level
    is resized on the fly (see :class:`~xt_plugins.io.SlideSource`). A slide much coarser than
    ``mpp`` (more than :data:`MAX_UPSAMPLE` times) is refused rather than blown up.

    Args:
        path: slide file (SVS, NDPI, MRXS, DICOM, pyramidal TIFF, ...).
        mpp: target microns per pixel.
        slide_mpp: level-0 microns per pixel, for slides that do not record it (or record it
            wrongly).
        mpp_tolerance: relative tolerance for a level to count as ``mpp``.

    Returns:
        The slide source; its ``shape`` is the slide's size at ``mpp``.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        xt_plugins.io.SlideOpenError: if OpenSlide cannot open the file.
        xt_plugins.io.MissingMPPError: if the slide records no mpp and ``slide_mpp`` is None.
        ValueError: if the slide is much coarser than ``mpp``.

    .. versionadded:: 0.1
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        source = SlideSource(path, mpp=mpp, slide_mpp=slide_mpp, mpp_tolerance=mpp_tolerance)
    if source.slide_mpp is not None and source.slide_mpp > mpp * MAX_UPSAMPLE:
        source.close()
        raise ValueError(
            f"{source.path}: the slide's resolution ({source.slide_mpp:.4g} um/px at level 0) is "
            f"much coarser than the requested {mpp} um/px; pass a coarser --mpp, or --slide-mpp "
            "if the slide's recorded resolution is wrong"
        )
    for w in caught:  # upsampling a little is allowed: pass SlideSource's warning on
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return source


# ---------------------------------------------------------------------------- data lists
def _slide_files(folder: Path) -> list[Path]:
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in FOLDER_SUFFIXES)
    # one entry per DICOM series folder is enough: OpenSlide opens the series from any file
    dicom = [p for p in files if p.suffix.lower() == ".dcm"]
    return [p for p in files if p.suffix.lower() != ".dcm"] + dicom[:1]


def read_slide_data(
    dataset_dir: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    *,
    labels_csv: str | None = "labels.csv",
    require_labels: bool = False,
) -> list[dict[str, Any]]:
    """A MONAI data list ``[{"image": path, "label": int}, ...]`` of a folder of slides.

    Labels come from ``labels_csv`` in the folder (columns ``slide`` and ``label``, as written
    by ``xt-plugins make-slides``); without it the items have no ``"label"`` and the folder's
    slide files are listed (``.svs``, ``.ndpi``, ``.tiff``, ...; of ``.dcm`` files only the
    first, since OpenSlide opens a DICOM series from any of its files).

    Args:
        dataset_dir: a folder, or a list of slide files / folders.
        labels_csv: name of the label table inside the folder (None: ignore labels).
        require_labels: raise if a slide has no label (training).

    Returns:
        One dict per slide, in file order.

    Raises:
        FileNotFoundError: if a path does not exist, or no slides are found.
        ValueError: if labels are required and missing.

    .. versionadded:: 0.1
    """
    entries = [dataset_dir] if isinstance(dataset_dir, str | os.PathLike) else list(dataset_dir)
    data: list[dict[str, Any]] = []
    for entry in entries:
        p = Path(entry).expanduser()
        if not p.exists():
            raise FileNotFoundError(f"{p}: no such file or folder")
        labels: dict[str, int] = {}
        if p.is_dir():
            table = p / labels_csv if labels_csv else None
            if table is not None and table.is_file():
                with table.open(newline="") as f:
                    labels = {row["slide"]: int(row["label"]) for row in csv.DictReader(f)}
                files = [p / name for name in labels]
            else:
                files = _slide_files(p)
        else:
            files = [p]
        for f in files:
            item: dict[str, Any] = {"image": str(f)}
            if f.name in labels:
                item["label"] = labels[f.name]
            elif require_labels:
                raise ValueError(
                    f"{f}: no label; put a {labels_csv or 'labels.csv'} (columns slide,label) "
                    "next to the slides"
                )
            data.append(item)
    if not data:
        raise FileNotFoundError(
            f"no slides found in {dataset_dir} (suffixes {sorted(FOLDER_SUFFIXES)})"
        )
    return data


def slide_collate(items: Sequence[Any]) -> list[Any]:
    """Collate function for slide-mode items: the list itself (slides differ in size)."""
    return list(items)
