"""The README's Python examples run as written (in a fresh interpreter, in a scratch folder)."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_the_readme_has_python_examples():
    blocks = python_blocks()
    assert len(blocks) >= 2
    assert any("xt_plugins.io.open_image" in b for b in blocks)


@pytest.mark.slow
def test_readme_python_examples_run_as_written(tmp_path):
    """Every ```python block, in order, as one script (later blocks use earlier names)."""
    script = "\n\n".join(python_blocks())
    res = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        env={"OMP_NUM_THREADS": "2", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert (tmp_path / "pred.zarr").is_dir() and (tmp_path / "slide.tiff").is_file()
