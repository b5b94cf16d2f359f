"""Connecting to Ray for one featcache call (a running cluster, or a local Ray it starts and stops),
quietly and leaving the caller's process as it was; and joblib's Ray backend for the grid search.

Ray is an optional extra: it is imported here, on first use, never when featcache is imported.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import random

from joblib import parallel_backend

from featcache.core.errors import FeatcacheError

INSTALL = "the Ray engine needs Ray: pip install 'featcache[ray]' (or pip install 'ray[data]')"


def _ray():
    try:  # Ray: an optional extra, imported on use
        import ray  # Ray: the optional [ray] extra
        import ray.data  # noqa: F401
    except ImportError:
        raise FeatcacheError(INSTALL) from None
    return ray


def connect(address: str | None = None, num_cpus: int | None = None):
    """Join ``address`` (a running cluster) or start a local Ray; reuse an existing connection."""
    ray = _ray()
    if not ray.is_initialized():
        try:
            ray.init(address=address, num_cpus=None if address else num_cpus, include_dashboard=False,
                     log_to_driver=False, configure_logging=False, ignore_reinit_error=True)
        except (ConnectionError, RuntimeError, ValueError) as err:
            where = f"the Ray cluster at {address}" if address else "a local Ray instance"
            raise FeatcacheError(f"cannot start or join {where} ({str(err).splitlines()[0][:120]}): "
                                 "check `ray status`, or drop --engine ray") from None
    return ray


@contextlib.contextmanager
def session(address: str | None = None, num_cpus: int | None = None):
    """Ray for the length of one featcache call, leaving the caller's process as it was.

    A connection the caller made (``ray.init``) is used as it is and kept. Otherwise featcache joins
    ``address`` or starts a local Ray and disconnects (a local Ray stops) afterwards, restoring the
    environment variables and Python random state that connecting changes. The levels and handlers
    of Ray's loggers are restored either way.
    """
    ray = _ray()
    with _loggers_kept("ray", "ray.data"), _ray_lines_to_log_folder(ray) as held:
        if ray.is_initialized():
            yield ray
            return
        environ, rng = dict(os.environ), random.getstate()
        with contextlib.redirect_stderr(held.stream):  # ray.init drops the "ray" logger's handlers, then logs
            connect(address, num_cpus)
        held.attach()
        held.locate(ray)
        try:
            yield ray
        finally:
            held.write()  # while connected: Ray's log folder is known
            ray.shutdown()
            for name in set(os.environ) - set(environ):
                del os.environ[name]
            os.environ.update(environ)
            random.setstate(rng)


class _HeldLines(logging.Handler):
    """Ray's driver-side log records during a featcache call, appended to featcache-driver.log in Ray's log folder."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(filename)s:%(lineno)d -- %(message)s"))
        self.lines: list[str] = []
        self.stream = io.StringIO()  # what Ray writes to stderr while connecting
        self.folder: str | None = None

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))

    def attach(self) -> None:
        for name in ("ray", "ray.data"):
            logger = logging.getLogger(name)
            logger.handlers[:] = [h for h in logger.handlers if not _console(h) and h is not self] + [self]
            logger.propagate = False

    def locate(self, ray) -> None:
        with contextlib.suppress(Exception):  # the driver's node record is internal to Ray
            self.folder = self.folder or ray._private.worker._global_node.get_logs_dir_path()

    def write(self) -> None:
        text = self.stream.getvalue() + "".join(line + "\n" for line in self.lines)
        if text and self.folder:
            with contextlib.suppress(OSError), open(os.path.join(self.folder, "featcache-driver.log"), "a") as f:
                f.write(text)
        self.lines.clear()
        self.stream = io.StringIO()


@contextlib.contextmanager
def _ray_lines_to_log_folder(ray):
    """Keep the terminal to featcache's lines: Ray's console handlers (its token-authentication notice,
    joblib's "'context' argument is not supported") are set aside for the call and the records go to
    Ray's log folder instead. ``session`` restores the handlers."""
    held = _HeldLines()
    held.attach()
    if ray.is_initialized():
        held.locate(ray)
    try:
        yield held
    finally:
        held.write()


def _console(handler: logging.Handler) -> bool:
    return isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler)


@contextlib.contextmanager
def _loggers_kept(*names: str):
    saved = {n: (lg.level, lg.handlers[:], lg.propagate) for n in names for lg in [logging.getLogger(n)]}
    try:
        yield
    finally:
        for name, (level, handlers, propagate) in saved.items():
            logger = logging.getLogger(name)
            logger.setLevel(level)
            logger.handlers[:] = handlers
            logger.propagate = propagate


@contextlib.contextmanager
def joblib_backend(n_jobs: int):
    """Run joblib.Parallel calls (the grid search's candidates x folds) as Ray tasks."""
    with session(os.environ.get("RAY_ADDRESS")):
        from ray.util.joblib import register_ray  # Ray: an optional extra, imported on use

        register_ray()
        with parallel_backend("ray", n_jobs=n_jobs):
            yield
