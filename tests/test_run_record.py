"""Issue 12: a run is one typed record (params, metrics) written and read through to/from dict."""

from __future__ import annotations

import json

import featcache
from featcache.fitting.runs import RunMetrics, RunParams, load_run
from tests.conftest import featcache as run_cli
from tests.conftest import make_images


def test_run_files_round_trip_through_the_typed_record_and_the_cli_serialises_it(tmp_path):
    data = make_images(tmp_path / "data", per_class=6)
    result = featcache.extract(data, cache_dir=tmp_path / "c", model="resnet18", weights="none", image_size=32,
                               progress_bar=False)
    run = featcache.fit(head="mlp", features=result.id, cache_dir=tmp_path / "c", runs_dir=tmp_path / "r", cv=2,
                        head_params={"max_epochs": 2}, progress_bar=False)
    on_disk_params = json.loads((run.path / "params.json").read_text())
    on_disk_metrics = json.loads((run.path / "metrics.json").read_text())
    loaded = load_run(run.path)
    assert isinstance(loaded.params, RunParams) and isinstance(loaded.metrics, RunMetrics)
    assert loaded.params.to_dict() == on_disk_params and loaded.metrics.to_dict() == on_disk_metrics
    assert loaded.metrics.history and len(loaded.metrics.history) == 2  # the MLP's epochs
    assert loaded.metrics.test.n == run.metrics.test.n > 0
    assert len(loaded.metrics.fold_scores()) == 2
    listed = json.loads(run_cli("runs", "--runs-dir", tmp_path / "r", "--json", cwd=tmp_path).stdout)
    assert listed == [json.loads(json.dumps(loaded.to_row()))]
    table = run_cli("runs", "--runs-dir", tmp_path / "r", cwd=tmp_path).stdout
    row = listed[0]
    for value in (row["name"], row["head"], row["model"], row["layer"], row["pool"], f"{row['cv_mean']:.4f}",
                  f"{row['test_accuracy']:.4f}", row["features"][:8]):
        assert str(value) in table
