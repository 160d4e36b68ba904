"""The shipped folders (``recipes/``, ``configs/``, ``benchmarks/``) wherever xt-plugins runs.

The top-level folders of the source tree are the source of truth. A wheel carries copies of
them inside the package (``xt_plugins/_shipped/<name>``, written by ``setup.py``'s
``build_py``), so ``pip install xt-plugins`` then ``xt-plugins demo`` works; in a source
checkout or an editable install the folders are read where they are.

.. versionadded:: 0.2
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path

__all__ = ["SHIPPED", "shipped_path"]

#: The folders shipped with the package.
SHIPPED: tuple[str, ...] = ("recipes", "configs", "benchmarks")


def shipped_path(name: str) -> Path:
    """The folder ``name`` (``recipes``, ``configs`` or ``benchmarks``) as a real path.

    Args:
        name: one of :data:`SHIPPED`.

    Returns:
        ``xt_plugins/_shipped/<name>`` of an installed wheel, else ``<source tree>/<name>``.

    Raises:
        FileNotFoundError: if neither exists (a broken install).
    """
    if name not in SHIPPED:
        raise ValueError(f"unknown shipped folder {name!r}; known: {', '.join(SHIPPED)}")
    installed = Path(str(importlib.resources.files("xt_plugins") / "_shipped" / name))
    if installed.is_dir():
        return installed
    source = Path(__file__).resolve().parent.parent / name
    if source.is_dir():
        return source
    raise FileNotFoundError(
        f"{installed}: the shipped {name}/ folder is missing; reinstall xt-plugins "
        "(pip install --force-reinstall xt-plugins) or run from a source checkout"
    )
