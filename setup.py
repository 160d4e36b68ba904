"""Build hook: copy the top-level ``recipes/``, ``configs/`` and ``benchmarks/`` into the wheel.

The folders stay at the top of the source tree (their source of truth); a built wheel
carries them as ``xt_plugins/_shipped/<name>`` (read by :mod:`xt_plugins.resources`). An
editable install reads them from the source tree instead. Everything else is in
pyproject.toml.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

SHIPPED = ("recipes", "configs", "benchmarks")
#: Never shipped: run outputs and caches.
IGNORE = shutil.ignore_patterns("results", "__pycache__", "*.pyc", "models", "eval")


class BuildPyWithShipped(build_py):
    """``build_py`` that also copies the shipped folders into the built package."""

    def run(self) -> None:
        """Build the package, then add the shipped folders (not in editable builds)."""
        super().run()
        if getattr(self, "editable_mode", False):
            return
        root = Path(__file__).resolve().parent
        for name in SHIPPED:
            target = Path(self.build_lib) / "xt_plugins" / "_shipped" / name
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(root / name, target, ignore=IGNORE)


setup(cmdclass={"build_py": BuildPyWithShipped})
