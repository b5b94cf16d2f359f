"""Issue 12: every ``--json`` carries at least what the command's table or plain output shows."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

import cli
from tests.conftest import make_images


def invoke(*args, env=None):
    result = CliRunner().invoke(cli.main, [str(a) for a in args], env={"FEATCACHE_OFFLINE": "1", **(env or {})},
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


def parse_table(text: str) -> tuple[list[str], list[dict]]:
    """A `_table` printout -> header and rows, cut at the columns' start offsets (cells hold single spaces)."""
    lines = text.rstrip("\n").splitlines()
    header = re.findall(r"\S+(?: \S+)*", lines[0])
    starts = [lines[0].index(h) for h in header]
    bounds = list(zip(starts, starts[1:] + [None]))
    return header, [{h: line[a:b].strip() for h, (a, b) in zip(header, bounds)} for line in lines[1:]]


def check_table_against_json(table_text: str, records: list[dict], columns: dict) -> None:
    header, rows = parse_table(table_text)
    unmapped = [h for h in header if h not in columns]
    assert not unmapped, f"table columns with no JSON counterpart in this test: {unmapped}"
    assert len(rows) == len(records)
    for row, record in zip(rows, records):
        for h in header:
            assert columns[h](record) == row[h], (h, record)


def _params(best: dict) -> str:
    return ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in best.items()) or "-"


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    root = tmp_path_factory.mktemp("json")
    data = make_images(root / "data", classes=("red", "blue"), per_class=6, size=(40, 40))
    (data / "red" / "notes.txt").write_text("not an image")
    (data / "blue" / "broken.png").write_bytes(b"not a png")
    common = ["--cache-dir", root / "cache"]
    extract_args = ["extract", "--data", data, "--model", "resnet18", "--weights", "none", "--image-size", "32", *common]
    plain = invoke(*extract_args)
    as_json = invoke(*extract_args, "--json", "-q")
    fit_args = ["fit", "--head", "logreg", "--param", "C=1,10", "--cv", "2", *common, "--runs-dir", root / "runs"]
    fit_plain = invoke(*fit_args, "-q")
    fit_json = invoke(*fit_args, "-q", "--json")
    return {"root": root, "data": data, "common": common, "extract": (plain, as_json), "fit": (fit_plain, fit_json)}


def test_extract_json_carries_the_summary_and_the_skipped_and_ignored_files(ws):
    plain, as_json = ws["extract"]
    doc = json.loads(as_json.stdout)
    summary = plain.stdout.strip()
    shape = "x".join(map(str, doc["feature_shape"]))
    assert summary.startswith(f"feature set {doc['id']}: {doc['rows']} x {shape} -> {doc['path']} (")
    assert f"{len(doc['skipped'])} skipped)" in summary and doc["skipped"] == [{"path": "blue/broken.png", "reason": doc["skipped"][0]["reason"]}]
    assert "ignored 1 non-image file(s), e.g. red/notes.txt" in plain.stderr
    assert doc["ignored"] == ["red/notes.txt"]


def test_fit_json_carries_the_summary_line(ws):
    plain, as_json = ws["fit"]
    doc = json.loads(as_json.stdout)
    first, second = plain.stdout.strip().splitlines()
    # two fits of the same grid: two run directories, the same result
    assert Path(doc["run"]).parent == Path(first.split()[1].rstrip(":")).parent and Path(doc["run"]).is_dir()
    first = first.split(": ", 1)[1]
    expected = (f"{doc['head']} on feature set {doc['features']} "
                f"({doc['model']} {doc['layer']}); best {_params(doc['best_params'])}; "
                f"CV accuracy {doc['cv_mean']:.4f} +- {doc['cv_std']:.4f}; test accuracy {doc['test_accuracy']:.4f} "
                f"({doc['test_images']} images)")
    assert first == expected
    assert second == f"test accuracy: {doc['test_accuracy']:.4f}"


def test_cache_list_json_has_every_column_of_the_table(ws):
    table = invoke("cache", "list", *ws["common"]).stdout
    records = json.loads(invoke("cache", "list", *ws["common"], "--json").stdout)
    check_table_against_json(table, records, {
        "ID": lambda r: r["id"], "STATE": lambda r: r["state"], "MODEL": lambda r: r["model"], "LAYER": lambda r: r["layer"],
        "POOL": lambda r: r["pool"], "ROWS": lambda r: str(r["rows"]), "SHAPE": lambda r: "x".join(map(str, r["feature_shape"])),
        "SIZE": lambda r: cli._size(r["size_bytes"]), "CREATED": lambda r: r["created"],
    })


def test_runs_json_has_every_column_of_the_table(ws):
    runs_dir = ["--runs-dir", ws["root"] / "runs"]
    table = invoke("runs", *runs_dir).stdout
    records = json.loads(invoke("runs", *runs_dir, "--json").stdout)
    check_table_against_json(table, records, {
        "RUN": lambda r: Path(r["run"]).name, "HEAD": lambda r: r["head"],
        "FEATURES": lambda r: f"{r['model']}/{r['layer']}/{r['pool']} {r['features'][:8]}",
        "BEST PARAMS": lambda r: _params(r["best_params"]), "CV ACCURACY": lambda r: f"{r['cv_mean']:.4f} +- {r['cv_std']:.4f}",
        "TEST ACC": lambda r: f"{r['test_accuracy']:.4f}", "FIT S": lambda r: f"{r['fit_seconds']:.2f}",
    })


def test_models_json_has_every_column_of_the_table(ws):
    env = {"XDG_CACHE_HOME": str(ws["root"] / "xdg")}
    table = invoke("models", "resnet1*", "-q", env=env).stdout
    records = json.loads(invoke("models", "resnet1*", "-q", "--json", env=env).stdout)
    check_table_against_json(table, records, {
        "MODEL": lambda r: r["name"], "FAMILY": lambda r: r["family"], "DEFAULT LAYER": lambda r: r["default_layer"],
        "FEATURES": lambda r: "x".join(map(str, r["feature_shape"])) or "?", "PRETRAINED WEIGHTS": lambda r: r["weights"],
    })


def test_cache_info_json_has_every_line_of_the_plain_output(ws):
    plain = invoke("cache", "info", json.loads(ws["extract"][1].stdout)["id"], *ws["common"]).stdout
    doc = json.loads(invoke("cache", "info", json.loads(ws["extract"][1].stdout)["id"], *ws["common"], "--json").stdout)
    for line in plain.splitlines():
        key, _, value = line.partition(" ")
        shown = doc[key]
        assert (json.dumps(shown) if isinstance(shown, (dict, list)) else str(shown)) == value.strip(), key


def test_predict_json_has_every_field_of_the_plain_output(ws):
    run = json.loads(ws["fit"][1].stdout)["run"]
    images = [ws["data"] / "red" / "red_000.png", ws["data"] / "blue" / "broken.png"]
    plain = invoke("predict", *images, "--run", run, *ws["common"], "-q").stdout.splitlines()
    records = json.loads(invoke("predict", *images, "--run", run, *ws["common"], "-q", "--json").stdout)
    assert len(plain) == len(records) == 2
    for line, r in zip(plain, records):
        shown = f"{r['path']}\terror: {r['error']}" if r["error"] else f"{r['path']}\t{r['label']}\t{r['confidence']:.4f}"
        assert line == shown
