"""Issue 12: against a running Ray cluster, the terminal holds featcache's lines only.

A real cluster (``ray start --head``) with token authentication, as a user runs it: ``extract
--engine ray --ray-address auto`` and ``RAY_ADDRESS=auto fit --backend ray`` used to print Ray's
token-authentication notice and joblib's "'context' argument is not supported" warning. Those lines
now go to featcache-driver.log in the cluster's log folder.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.conftest import cli_env, make_images
from tests.conftest import featcache as run_cli

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def _processes_under(marker: str) -> list[int]:
    """Our cluster's processes: those whose command line names its temp dir, and their descendants."""
    parents, roots = {}, set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if marker in cmdline:
            roots.add(int(entry.name))
    found, grew = set(roots), True
    while grew:
        children = {pid for pid, ppid in parents.items() if ppid in found} - found
        found |= children
        grew = bool(children)
    return sorted(found - {os.getpid()})


def _stop(marker: str) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = _processes_under(marker)
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.time() + 10
        while _processes_under(marker) and time.time() < deadline:
            time.sleep(0.2)


def _others_running(marker: str) -> bool:
    """Another Ray cluster on this machine (another user's): then ``auto`` would be ambiguous."""
    ours = set(_processes_under(marker))
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) not in ours:
            try:
                if b"gcs_server" in (entry / "cmdline").read_bytes():
                    return True
            except OSError:
                continue
    return False


@pytest.fixture(scope="module")
def cluster():
    pytest.importorskip("ray", reason="Ray is an optional extra: pip install 'featcache[ray]'")
    temp = tempfile.mkdtemp(prefix="fcray-", dir="/tmp")  # short: Ray's socket paths live under it
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    started = subprocess.run([sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--num-cpus", "2",
                              "--disable-usage-stats", "--include-dashboard", "false", "--port", "0",
                              "--temp-dir", temp], capture_output=True, text=True, env=env, timeout=180)
    try:
        if started.returncode:
            pytest.skip(f"cannot start a Ray cluster here: {started.stderr.strip()[-300:]}")
        address = re.search(r"ray start --address='([^']+)'", started.stdout + started.stderr)[1]
        yield {"address": address, "temp": temp}
    finally:
        _stop(temp)  # only the processes of this cluster, never `ray stop` (other users' clusters)
        shutil.rmtree(temp, ignore_errors=True)


def test_extract_and_fit_against_a_cluster_print_featcache_lines_only(cluster, tmp_path):
    data = make_images(tmp_path / "data", classes=("a", "b"), per_class=6, size=(40, 40))
    # `auto` as the README says, unless another cluster on this machine makes it ambiguous
    auto = not _others_running(cluster["temp"])
    address = "auto" if auto else cluster["address"]
    env = cli_env(**({} if auto else {"RAY_AUTH_MODE": "token"}))
    common = ["--cache-dir", tmp_path / "c", "-q"]
    extract = run_cli("extract", "--data", data, "--model", "resnet18", "--weights", "none", "--image-size", "32",
                      "--engine", "ray", "--ray-address", address, *common, env=env)
    assert extract.returncode == 0, extract.stderr
    assert extract.stderr == ""
    assert extract.stdout.startswith("feature set ")
    fit = run_cli("fit", "--head", "logreg", "--param", "C=1,10", "--cv", "2", "--backend", "ray", "--n-jobs", "2",
                  "--runs-dir", tmp_path / "r", *common, env={**env, "RAY_ADDRESS": address})
    assert fit.returncode == 0, fit.stderr
    assert fit.stderr == ""
    assert [line.split(" ", 1)[0] for line in fit.stdout.splitlines()] == ["run", "test"]
    logs = list(Path(cluster["temp"]).glob("session_*/logs/featcache-driver.log"))
    assert logs and "'context' argument is not supported" in logs[0].read_text()
    if auto:
        assert "Token authentication is enabled" in logs[0].read_text()
