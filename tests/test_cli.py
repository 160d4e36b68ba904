"""The ``xt-plugins`` command line: every command has --help, errors are one line."""

import pytest

from xt_plugins.cli import build_parser, main

COMMANDS = [
    "demo", "models", "bench", "make-slides", "make-sar-scenes", "predict-slide", "predict-scene",
    "torchgeo",
]  # fmt: skip


def test_every_command_is_registered():
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert set(COMMANDS) <= set(sub.choices)


@pytest.mark.parametrize("command", COMMANDS)
def test_help(command, capsys):
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    assert "usage: xt-plugins " + command in capsys.readouterr().out


def test_models_lists_every_registered_name(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert out.count("\nxt_") == 24
    assert "xt_swinv2_tiny_mamba" in out and "swinv2_tiny_window16_256" in out


def test_bench_lists_the_benchmarks(capsys):
    assert main(["bench", "list"]) == 0
    assert {"scan", "memory_scaling", "throughput"} <= set(capsys.readouterr().out.split())


def test_errors_are_one_line_and_debug_raises(tmp_path, capsys):
    missing = tmp_path / "nope.ckpt"
    args = ["predict-scene", str(missing), str(tmp_path), "--out", str(tmp_path / "o")]
    assert main(args) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "nope.ckpt" in err and "Traceback" not in err
    with pytest.raises(Exception, match="nope.ckpt"):
        main(["--debug", *args])
