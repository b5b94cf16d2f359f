"""Issue 16: bench/gpu.py, the one-call GPU benchmark, runs end to end here (``--device cpu --tiny``).

The GPU machine is lent rarely and briefly; this keeps the script from rotting between loans: every
section must finish with figures, and the decoder agreement it reports must hold.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT, cli_env


@pytest.mark.slow
def test_the_gpu_bench_runs_every_section_on_a_cpu(tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, str(ROOT / "bench" / "gpu.py"), "--device", "cpu", "--tiny", "--out", str(out),
           "--data-root", str(tmp_path / "data")]
    r = subprocess.run(cmd, cwd=ROOT, env=cli_env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads((out / "gpu.json").read_text())
    assert {k: v["status"] for k, v in result["sections"].items()} == dict.fromkeys(
        ["data", "forward", "decode", "extract", "agreement", "naive"], "ok")
    models = result["settings"]["models"]
    assert result["meta"]["decode_gpu"] == "available" and result["meta"]["device"] == "cpu"
    for model in models:
        assert result["forward"][model]["best_img_s"] > 0 and result["forward"][model]["engine_forward_img_s"] > 0
    for size in ("small", "large"):
        assert result["data"][size]["images"] > 0
        assert result["decode"][size]["device_decode_img_s"] > 0 and result["decode"][size]["cpu_full_ms"] > 0
        agree = result["agreement"][size]
        assert agree["pixels_vs_cpu_full"]["max"] <= 2
        assert agree["features_gpu_vs_cpu_full"]["cosine_min"] >= 0.999  # 64 px crops here: each pixel weighs more
    runs = result["extract"]
    assert not [r for r in runs if "error" in r]
    assert {(r["model"], r["data"], r["decode"]) for r in runs} >= {(m, s, d) for m in models for s in ("small", "large") for d in ("cpu", "gpu")}
    assert all(r["reported_img_s"] > 0 and r["whole_call_img_s"] > 0 and r["skipped"] == 0 for r in runs)
    assert {n["data"] for n in result["naive"]} == {"small", "large"} and all(n["img_s"] > 0 for n in result["naive"])
    table = (out / "gpu.md").read_text()
    assert "## Forward-only" in table and "## featcache extract end to end" in table and "## --decode gpu vs CPU decode" in table
