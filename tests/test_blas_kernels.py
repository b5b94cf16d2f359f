"""The numeric tests under two OpenBLAS kernels, from the suite's one command (issue 20).

numpy's and scipy's OpenBLAS pick a kernel for the CPU they run on, and kernels sum in different
orders: the svm's float32 Gram matrix passed its test under Haswell and failed under SkylakeX, so
the README's test command passed on one machine and failed on the next. Here the numeric tests
(Gram path, svm, ridge, logreg, gap) run again in a subprocess under each ``OPENBLAS_CORETYPE``,
so both kernels run wherever this CPU can execute them. A kernel this CPU cannot run, or a numpy
that does not use OpenBLAS, is a skip with its reason (shown by ``-ra``), never a silent pass.

Not rerun: scikit-learn's estimator checks (the API contract, not numerics; most of these files'
time) and the MLP's tests (torch's own BLAS, which OPENBLAS_CORETYPE does not steer).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NUMERIC = ("tests/test_gram.py", "tests/test_fast_heads.py", "tests/test_heads.py")
SUBSET = "not sklearn_estimator_checks and not mlp"
# The CPU flags each kernel's instructions need (OpenBLAS's own dynamic-arch checks).
CORE_TYPES = {"SkylakeX": ("avx512f", "avx512bw", "avx512dq", "avx512vl"), "Haswell": ("avx2", "fma")}
_ARCHITECTURES = (
    "from threadpoolctl import threadpool_info\n"
    "import numpy, scipy.linalg\n"
    "print(' '.join(sorted({i.get('architecture') or '?' for i in threadpool_info() if i.get('internal_api') == 'openblas'})))"
)


def _cpu_flags() -> set[str] | None:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    return {flag for line in text.splitlines() if line.startswith("flags") for flag in line.partition(":")[2].split()}


def _env(core: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "OPENBLAS_"))}  # no xdist worker state
    return {**env, "OPENBLAS_CORETYPE": core}


@pytest.mark.parametrize("core", CORE_TYPES)
def test_numeric_tests_pass_under_openblas_kernel(core, tmp_path):
    flags = _cpu_flags()
    if flags is None:
        pytest.skip(f"OPENBLAS_CORETYPE={core} not run: no /proc/cpuinfo to tell whether this CPU can execute it")
    missing = [flag for flag in CORE_TYPES[core] if flag not in flags]
    if missing:
        pytest.skip(f"OPENBLAS_CORETYPE={core} not run: this CPU lacks {', '.join(missing)}")
    env = _env(core)
    probe = subprocess.run([sys.executable, "-c", _ARCHITECTURES], env=env, cwd=tmp_path, capture_output=True, text=True,
                           timeout=120)
    assert probe.returncode == 0, probe.stderr
    kernels = probe.stdout.split()
    if not kernels:
        pytest.skip(f"OPENBLAS_CORETYPE={core} not run: numpy and scipy do not use OpenBLAS here")
    if any(k.lower() != core.lower() for k in kernels):
        pytest.skip(f"OPENBLAS_CORETYPE={core} not run: OpenBLAS ignored it (runs {', '.join(kernels)}; not a dynamic-arch build)")
    # the child collects ROOT's conftest (it runs each test outside the repository) and writes no cache
    command = [sys.executable, "-m", "pytest", *(str(ROOT / f) for f in NUMERIC), "-k", SUBSET, "-q", "--tb=line", "-p", "no:cacheprovider",
               "--rootdir", str(ROOT), "-W", "ignore::pytest.PytestAssertRewriteWarning"]
    done = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=1200)
    tail = "\n".join((done.stdout + done.stderr).splitlines()[-25:])
    assert done.returncode == 0, f"numeric tests under OPENBLAS_CORETYPE={core}:\n{tail}"
    assert " passed" in tail and " deselected" in tail, tail
