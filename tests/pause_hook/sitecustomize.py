"""Test-only, loaded by Python at start-up from PYTHONPATH (tests/conftest.py's ``Background.start`` puts
this folder there): with FEATCACHE_TEST_PAUSE_AFTER=N and FEATCACHE_TEST_PAUSE_FILE=PATH, the process
stops right after its N-th committed batch (counted over every staging directory it writes), creates
PATH and waits until PATH is deleted. The fault tests use it to kill or hold a writer at a known point
instead of guessing with sleeps; the product itself carries no test hook."""

import os

if os.environ.get("FEATCACHE_TEST_PAUSE_AFTER"):
    import time
    from pathlib import Path

    from featcache.core.files import atomic_write
    from featcache.store.staging import Staging

    _after = int(os.environ["FEATCACHE_TEST_PAUSE_AFTER"])
    _marker = Path(os.environ["FEATCACHE_TEST_PAUSE_FILE"])
    _commit = Staging.commit
    _commits = [0]

    def _paused_commit(self, *args, **kwargs):
        _commit(self, *args, **kwargs)
        _commits[0] += 1
        if _commits[0] == _after:
            atomic_write(_marker, str(os.getpid()))
            deadline = time.monotonic() + 600  # never outlive a test that forgot to release or kill it
            while _marker.exists() and time.monotonic() < deadline:
                time.sleep(0.01)

    Staging.commit = _paused_commit
