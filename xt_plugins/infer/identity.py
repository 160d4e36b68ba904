"""What a run's outputs depend on: the input, the weights and the settings.

A run store (:mod:`xt_plugins.infer.store`) is resumed only when all three match what it
recorded, so a result is never reported for another input of the same size, another model or
other settings:

- the **input**: for files the absolute path, size, modification time and a hash of the file's
  first and last 64 KiB; for every source also a hash of a few sampled pixel windows (and of
  every pixel for in-memory arrays);
- the **weights**: a digest of the model's state dict (cached until a weight changes);
- the **settings**: everything the caller says changes the outputs (region size, transform,
  masks, ...), as plain JSON values.

.. versionadded:: 0.2
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "array_digest",
    "content_digest",
    "describe",
    "differing",
    "file_identity",
    "jsonable",
    "source_identity",
    "weights_digest",
]

#: Bytes hashed at each end of an input file.
HEADER_BYTES = 64 * 1024
#: Side of each sampled window, and how many per axis (a 3 x 3 grid over the image).
SAMPLE_SIDE, SAMPLES_PER_AXIS = 64, 3


def jsonable(value: Any) -> Any:
    """Plain JSON values (tuples -> lists, paths -> str, numpy scalars unwrapped)."""
    return json.loads(json.dumps(value, default=_default))


def _default(value: Any) -> Any:
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray | torch.Tensor):
        return array_digest(value)
    return repr(value)


def describe(obj: Any) -> str | None:
    """A stable description of a setting object (a transform): its repr without addresses.

    Functions and lambdas are named by module and qualified name, since their repr holds a
    memory address that changes from run to run.
    """
    if obj is None:
        return None
    if inspect.isfunction(obj) or inspect.ismethod(obj):
        return f"{obj.__module__}.{obj.__qualname__}"
    return re.sub(r" at 0x[0-9a-fA-F]+", "", repr(obj))


def file_identity(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Absolute path, size, mtime and a hash of the first and last bytes of a file or folder.

    For a folder (zarr store, DICOM series, scene folder) the files directly in it are
    listed by name, size and mtime instead of hashing bytes.
    """
    p = Path(path).expanduser().resolve()
    st = p.stat()
    out: dict[str, Any] = {"path": str(p), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    digest = hashlib.blake2b(digest_size=16)
    if p.is_dir():
        for child in sorted(p.iterdir()):
            cst = child.stat()
            digest.update(f"{child.name}:{cst.st_size}:{cst.st_mtime_ns};".encode())
    else:
        with p.open("rb") as f:
            digest.update(f.read(HEADER_BYTES))
            if st.st_size > 2 * HEADER_BYTES:
                f.seek(-HEADER_BYTES, os.SEEK_END)
                digest.update(f.read(HEADER_BYTES))
    out["header"] = digest.hexdigest()
    return out


def array_digest(array: np.ndarray | torch.Tensor) -> str:
    """Hash of an array's shape, dtype and every value."""
    if isinstance(array, torch.Tensor):
        array = array.detach().cpu().numpy()
    arr = np.ascontiguousarray(array)
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{arr.shape}{arr.dtype.str}".encode())
    flat = arr.reshape(-1).view(np.uint8) if arr.size else arr.reshape(-1)
    step = 1 << 26  # 64 MiB at a time
    for i in range(0, flat.size, step):
        digest.update(flat[i : i + step].tobytes())
    return digest.hexdigest()


def content_digest(source: Any) -> str:
    """Hash of a 3 x 3 grid of 64-px windows read through ``source.read`` (cheap)."""
    _, height, width = (int(s) for s in source.shape)
    digest = hashlib.blake2b(digest_size=16)
    for fy in np.linspace(0, 1, SAMPLES_PER_AXIS):
        for fx in np.linspace(0, 1, SAMPLES_PER_AXIS):
            y = int(fy * max(height - SAMPLE_SIDE, 0))
            x = int(fx * max(width - SAMPLE_SIDE, 0))
            window = np.ascontiguousarray(source.read(y, x, SAMPLE_SIDE, SAMPLE_SIDE))
            digest.update(window.tobytes())
    return digest.hexdigest()


def _paths(source: Any) -> list[str]:
    files = getattr(source, "files", None)  # multi-file sources (a scene's band files)
    if isinstance(files, Mapping):
        return [os.fspath(v) for v in files.values()]
    path = getattr(source, "path", None)
    return [os.fspath(path)] if path else []


def source_identity(source: Any) -> dict[str, Any]:
    """The identity of an input: its files (if any), shape and sampled content.

    A source may define ``identity() -> dict`` to add what it knows (a slide's level and mpp,
    a raster's bands); that is merged in. In-memory arrays are hashed whole.

    Args:
        source: a lazy image source (see :func:`xt_plugins.stream_predict`).

    Returns:
        Plain JSON values.
    """
    out: dict[str, Any] = {
        "type": type(source).__name__,
        "shape": [int(s) for s in source.shape],
        "files": [file_identity(p) for p in _paths(source)],
    }
    array = getattr(source, "array", None)
    if not out["files"] and isinstance(array, np.ndarray) and not isinstance(array, np.memmap):
        out["content"] = array_digest(array)
    else:
        out["content"] = content_digest(source)
    extra = getattr(source, "identity", None)
    if callable(extra):
        out.update(extra())
    return jsonable(out)


def weights_digest(model: torch.nn.Module) -> str:
    """A short hash of a model's state dict, cached until a tensor changes in place."""
    tensors = model.state_dict()
    versions = tuple((name, t._version, t.data_ptr()) for name, t in tensors.items())
    cached = getattr(model, "_xt_weights_digest", None)
    if cached is not None and cached[0] == versions:
        return cached[1]
    digest = hashlib.sha1()
    for name, value in tensors.items():
        digest.update(name.encode())
        _update_tensor(digest, value)
    result = digest.hexdigest()[:16]
    model._xt_weights_digest = (versions, result)
    return result


def _update_tensor(digest: Any, value: torch.Tensor) -> None:
    t = value.detach().cpu().contiguous()
    digest.update(f"{tuple(t.shape)}{t.dtype}".encode())
    if t.numel():
        digest.update(t.view(-1).view(torch.uint8).numpy())


def differing(a: Mapping[str, Any], b: Mapping[str, Any], keys: Iterable[str]) -> list[str]:
    """Which of ``keys`` differ between two identities."""
    return [k for k in keys if a.get(k) != b.get(k)]
