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
