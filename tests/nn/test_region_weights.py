"""read_state_dict: every file it cannot read safely is one line naming it, and nothing runs."""

from __future__ import annotations

import pickle
import re
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from xt_plugins.nn.region_weights import RegionWeightsError, read_state_dict


class _Payload:
    """Pickles to a call of ``open(marker, "w")``: loading it with full pickle creates a file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _write(path: Path, kind: str, marker: Path) -> str:
    """Write a file ``read_state_dict`` must refuse; return the reason its message must give."""
    payload = {"state_dict": {"x": _Payload(marker)}}
    if kind == "zip":  # torch.save's zip layout
        torch.save(payload, path)
        return r"Unsupported global: GLOBAL \S*open\b"
    if kind == "pickle5":  # raw pickle, protocol 5: torch warns about the protocol first
        path.write_bytes(pickle.dumps(payload, protocol=5))
        return r"Unsupported operand \d+"
    if kind == "text":
        path.write_text("not a checkpoint\n")
        return r"Unsupported operand \d+"
    if kind == "empty":
        path.write_bytes(b"")
        return "EOFError"
    # a safetensors file cut short
    save_file({"w": torch.ones(64)}, str(path))
    path.write_bytes(path.read_bytes()[:40])
    return r"\S.*"


@pytest.mark.parametrize(
    ("kind", "name"),
    [
        ("zip", "evil.pt"),
        ("pickle5", "evil.ckpt"),
        ("text", "notes.pth"),
        ("empty", "empty.bin"),
        ("cut", "cut.safetensors"),
    ],
)
def test_unreadable_file_is_one_line_naming_it_and_prints_nothing(tmp_path, capfd, kind, name):
    marker = tmp_path / "ran"
    path = tmp_path / name
    reason = _write(path, kind, marker)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(RegionWeightsError) as err:
            read_state_dict(path)
    msg = str(err.value)
    assert msg.startswith(f"{path}: ") and "\n" not in msg and "\x1b" not in msg, msg
    assert re.search(f"\\(({reason})\\)", msg), msg
    assert "add_safe_globals" not in msg and len(msg) < 320, msg
    if kind != "cut":
        assert "weights_only=True" in msg  # what existing callers match on
    assert err.value.__suppress_context__  # torch's text is not chained into the traceback
    assert [str(w.message) for w in caught] == []
    assert capfd.readouterr().err == ""
    assert not marker.exists()


def test_plain_and_nested_state_dicts_still_read(tmp_path):
    state = {"a.weight": torch.arange(6.0).reshape(2, 3), "a.bias": torch.ones(2)}
    torch.save({"epoch": 3, "state_dict": state}, tmp_path / "nested.ckpt")
    torch.save(state, tmp_path / "plain.pt")
    save_file(state, str(tmp_path / "w.safetensors"))
    for name in ("nested.ckpt", "plain.pt", "w.safetensors"):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            got = read_state_dict(tmp_path / name)
        assert got.keys() == state.keys() and all(torch.equal(got[k], state[k]) for k in state)
        assert caught == [], name
