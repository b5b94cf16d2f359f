"""Issue 12: a library call leaves the caller's process as it found it.

Importing featcache, extracting, fitting and rendering a report from a notebook or a script must not
change the caller's environment variables, random number generators, torch thread count, matplotlib
backend or third-party global settings. Process-wide policy belongs to the ``featcache`` command.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT


def _python(code: str, env: dict | None = None) -> str:
    base = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**base, **(env or {})}, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout.strip()


def test_importing_featcache_sets_no_environment_variable():
    code = "import os; before = dict(os.environ); import featcache, featcache.core.paths; print(dict(os.environ) == before)"
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
    from featcache.core.errors import WeightsError

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
from featcache.report import plots as report
from featcache.sweeps import leaderboard as sweeps
out = Path(sys.argv[1])
table = {"param_C": [0.1, 1.0, 10.0], "mean_test_score": [0.5, 0.7, 0.6], "std_test_score": [0.1, 0.1, 0.1]}
paths = [report.plot_param(table, "C", out / "c.png", "C"), report.plot_confusion([[3, 1], [0, 4]], ["a", "b"], out / "m.png"),
         report.plot_history([{"epoch": 1, "train_loss": 1.0, "train_accuracy": 0.5}], out / "h.png"),
         sweeps._plot_cost([{"head": "svm", "images_per_second": 10.0, "cv_mean": 0.9, "cv_std": 0.1, "model": "m",
                             "weights": "pretrained", "layer": "l", "pool": "none", "views": "none"}], out / "s.png")]
assert all(p.read_bytes().startswith(b"\\x89PNG") for p in paths), paths
print(matplotlib.get_backend(), "matplotlib.pyplot" in sys.modules)
"""


def test_plots_leave_the_callers_matplotlib_backend_alone(tmp_path):
    assert _python(PLOTS.replace("sys.argv[1]", repr(str(tmp_path)))) == "template False"


SESSION = """
import json, logging, os, random, sys
from pathlib import Path
import matplotlib
matplotlib.use("template")
import numpy as np
import torch
import huggingface_hub.constants as hub
import torchvision.models  # noqa: F401  (importing torch._dynamo sets TORCHINDUCTOR_CACHE_DIR: torch's doing)
engine, work = sys.argv[1], Path(sys.argv[2])
torch.manual_seed(7); random.seed(7); np.random.seed(7)
torch.set_num_threads(3)
if engine == "ray":
    import ray.data
import featcache
from featcache.fitting import report
from featcache.fitting.runs import load_run
from tests.conftest import make_images

data = make_images(work / "data", classes=("a", "b"), per_class=6, size=(40, 40))

def state():
    s = {"env": dict(os.environ), "torch_rng": torch.get_rng_state().tolist(), "python_rng": random.getstate(),
         "numpy_rng": np.random.get_state()[1].tolist(), "threads": torch.get_num_threads(),
         "interop_threads": torch.get_num_interop_threads(), "backend": matplotlib.get_backend(),
         "pyplot": "matplotlib.pyplot" in sys.modules, "hf_offline": hub.HF_HUB_OFFLINE,
         "loggers": {n: logging.getLogger(n).level for n in ("", "ray", "ray.data", "huggingface_hub")}}
    if engine == "ray":
        ctx = ray.data.DataContext.get_current()
        s["ray_data"] = [ctx.execution_options.preserve_order, ctx.enable_progress_bars, ctx.print_on_execution_start]
    return s

before = state()
result = featcache.extract(data, model="resnet18", weights="none", image_size=32, cache_dir=work / "cache",
                           engine=engine, progress_bar=False)
run = featcache.fit(head="logreg", params={"C": [1.0, 10.0]}, cv=2, cache_dir=work / "cache", runs_dir=work / "runs",
                    backend="ray" if engine == "ray" else "local", n_jobs=2, progress_bar=False)
report.render_run(load_run(run.path))
featcache.predict([data / "a"], run.path, cache_dir=work / "cache", progress_bar=False)
after = state()
changed = {k: (before[k], after[k]) for k in before if before[k] != after[k]}
if "env" in changed:
    b, a = changed["env"]
    changed["env"] = {k: (b.get(k), a.get(k)) for k in set(b) | set(a) if b.get(k) != a.get(k)}
for k in ("torch_rng", "python_rng", "numpy_rng"):
    if k in changed:
        changed[k] = "changed"
print("CHANGED " + json.dumps(changed, default=str))
"""


def _session(engine: str, tmp_path) -> dict:
    import json

    out = _python(SESSION.replace("sys.argv[1], Path(sys.argv[2])", f"{engine!r}, Path({str(tmp_path)!r})"),
                  env={"FEATCACHE_OFFLINE": "1", "PYTHONWARNINGS": "ignore"})
    line = next(l for l in out.splitlines() if l.startswith("CHANGED "))
    return json.loads(line[len("CHANGED "):])


def test_extract_fit_and_report_leave_the_callers_session_as_it_was(tmp_path):
    assert _session("local", tmp_path) == {}


@pytest.mark.ray
@pytest.mark.slow
def test_the_ray_engine_and_backend_leave_the_callers_session_as_it_was(tmp_path):
    pytest.importorskip("ray", reason="Ray is an optional extra: pip install 'featcache[ray]'")
    assert _session("ray", tmp_path) == {}
