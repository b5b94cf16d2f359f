"""Issue 12: a library call leaves the caller's process as it found it.

Importing featcache, extracting, fitting and rendering a report from a notebook or a script must not
change the caller's environment variables, random number generators, torch thread count, matplotlib
backend or third-party global settings. Process-wide policy belongs to the ``featcache`` command.
"""

from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import ROOT


def _python(code: str, env: dict | None = None) -> str:
    base = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**base, **(env or {})}, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout.strip()


def test_importing_featcache_sets_no_environment_variable():
    code = "import os; before = dict(os.environ); import featcache, featcache.config; print(dict(os.environ) == before)"
    assert _python(code) == "True"


def test_the_command_and_the_benches_still_set_omp_wait_policy_before_torch_loads():
    assert _python("import os, cli; print(os.environ.get('OMP_WAIT_POLICY'))") == "PASSIVE"
    bench = "import os, sys; sys.path.insert(0, 'bench'); import _common; print(os.environ.get('OMP_WAIT_POLICY'))"
    assert _python(bench) == "PASSIVE"


def _rng_states():
    import random

    import numpy as np
    import torch

    return torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy()


def _same(a, b) -> bool:
    return bool(a[0].equal(b[0]) and a[1] == b[1] and (a[2] == b[2]).all())


def test_building_backbones_leaves_the_callers_random_generators_alone(tmp_path):
    import torch

    from featcache import backbones

    family, arch = backbones.family_of("resnet18")
    torch.manual_seed(0)
    reference = family.build_random(arch).state_dict()  # what random init meant so far: seed 0, then build
    torch.save(reference, tmp_path / "w.pth")
    torch.manual_seed(1234)
    before = _rng_states()
    random_init = backbones.build(backbones.resolve("resnet18", weights="none", image_size=32))
    backbones.build(backbones.resolve("resnet18", weights=str(tmp_path / "w.pth"), image_size=32))  # file weights
    backbones.resolve("timm:resnet18", weights="none")  # builds on the meta device
    backbones.resolve("regnet_y_400mf", weights="none")  # builds on the CPU, then moves to meta
    assert _same(before, _rng_states())
    built = {k.split(".", 1)[1]: v for k, v in random_init.state_dict().items()}  # inner.<name>
    assert built and all(torch.equal(v, reference[k]) for k, v in built.items())  # random init: the same numbers


def test_a_failed_offline_lookup_leaves_huggingface_hubs_offline_flag_as_it_was(monkeypatch):
    import huggingface_hub.constants as hub
    import pytest
    import timm
    from huggingface_hub.errors import LocalEntryNotFoundError

    from featcache import backbones
    from featcache.errors import WeightsError

    spec = backbones.resolve("timm:resnet18")
    seen = []

    def create_model(name, pretrained=False, **kwargs):
        seen.append(hub.HF_HUB_OFFLINE)
        raise LocalEntryNotFoundError("cannot find the requested files in the local cache")

    monkeypatch.setattr(timm, "create_model", create_model)
    monkeypatch.setenv("FEATCACHE_OFFLINE", "1")
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", False)
    with pytest.raises(WeightsError, match="offline"):
        backbones.build(spec)
    assert seen == [True]  # the cache alone was asked, at once ...
    assert hub.HF_HUB_OFFLINE is False  # ... and only for that call


PLOTS = """
import sys
from pathlib import Path
import matplotlib
matplotlib.use("template")
from featcache import report, sweeps
out = Path(sys.argv[1])
table = {"param_C": [0.1, 1.0, 10.0], "mean_test_score": [0.5, 0.7, 0.6], "std_test_score": [0.1, 0.1, 0.1]}
paths = [report.plot_param(table, "C", out / "c.png", "C"), report.plot_confusion([[3, 1], [0, 4]], ["a", "b"], out / "m.png"),
         report.plot_history([{"epoch": 1, "train_loss": 1.0, "train_accuracy": 0.5}], out / "h.png"),
         sweeps._plot_cost([{"head": "svm", "images_per_second": 10.0, "cv_mean": 0.9, "cv_std": 0.1, "model": "m",
                             "weights": "pretrained", "layer": "l", "pool": "none"}], out / "s.png")]
assert all(p.read_bytes().startswith(b"\\x89PNG") for p in paths), paths
print(matplotlib.get_backend(), "matplotlib.pyplot" in sys.modules)
"""


def test_plots_leave_the_callers_matplotlib_backend_alone(tmp_path):
    assert _python(PLOTS.replace("sys.argv[1]", repr(str(tmp_path)))) == "template False"
