"""The many-input runner: naming, the predictions table, failure isolation (issue 12, case 3)."""

import csv
import os

import pytest

from xt_plugins.infer.runner import (
    InputItem,
    PredictionTable,
    expand_inputs,
    output_names,
    run_inputs,
)


def test_output_names_never_collide(tmp_path):
    paths = [tmp_path / "a" / "slide.tiff", tmp_path / "b" / "slide.tiff", tmp_path / "a" / "x.svs"]
    assert output_names(paths) == ["a/slide", "b/slide", "x"]
    # one folder: bare stems, as before
    assert output_names([tmp_path / "s1.svs", tmp_path / "s2.svs"]) == ["s1", "s2"]
    # same folder, same stem: a short hash of the path keeps them apart
    names = output_names([tmp_path / "slide.svs", tmp_path / "slide.tiff"])
    assert len(set(names)) == 2 and all(n.startswith("slide-") for n in names)
    # scene folders (no suffix) of different parents
    assert output_names([tmp_path / "scenes" / "s0", tmp_path / "scenesB" / "s0"]) == [
        "scenes/s0",
        "scenesB/s0",
    ]


def test_folders_that_are_not_inputs_fail_alone(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "x.svs").mkdir()
    (tmp_path / "slides").mkdir()
    for name in ("b.svs", "a.tiff", "notes.txt"):
        (tmp_path / "slides" / name).write_bytes(b"")
    items = expand_inputs(
        [tmp_path / "empty", tmp_path / "x.svs", tmp_path / "slides", tmp_path / "missing.svs"],
        suffixes={".svs", ".tiff"},
        what="slide",
    )
    assert [i.path.name for i in items] == ["empty", "x.svs", "a.tiff", "b.svs", "missing.svs"]
    assert items[0].error == f"{tmp_path / 'empty'}: no slides in this folder (.svs .tiff)"
    assert items[1].error == f"{tmp_path / 'x.svs'}: is a folder, not a slide file"
    assert [i.error for i in items[2:]] == [None] * 3  # a missing file fails when predicted
    outcomes = run_inputs(items, lambda item: item.path.stat().st_size)
    assert [o.ok for o in outcomes] == [False, False, True, True, False]
    assert "no such file" in outcomes[-1].error.lower() and "\n" not in outcomes[-1].error


def test_the_table_keeps_other_inputs_rows_and_survives_an_interrupt(tmp_path):
    table_path = tmp_path / "predictions.csv"
    fields = ("slide", "path", "status", "value", "error")
    items = [InputItem(tmp_path / f"s{i}.svs") for i in range(3)]

    def row(outcome):
        return {
            "slide": outcome.item.path.name,
            "path": outcome.item.key,
            "status": "ok" if outcome.ok else "error",
            "value": outcome.result,
            "error": outcome.error,
        }

    run_inputs(items[:2], lambda it: 1, row=row, table=PredictionTable(table_path, fields))
    calls = []

    def interrupted(item):
        calls.append(item)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return 2

    with pytest.raises(KeyboardInterrupt):  # a new run over s2 and s0: s2 lands, then ^C
        run_inputs(
            [items[2], items[0]], interrupted, row=row, table=PredictionTable(table_path, fields)
        )
    with table_path.open(newline="") as f:
        rows = {r["slide"]: r for r in csv.DictReader(f)}
    assert set(rows) == {"s0.svs", "s1.svs", "s2.svs"}  # earlier rows kept
    assert rows["s2.svs"]["value"] == "2" and rows["s0.svs"]["value"] == "1"
    assert rows["s0.svs"]["path"] == os.fspath(items[0].key)
    assert not list(tmp_path.glob(".predictions.csv.*"))  # no temporary file left behind
