"""Issue 5, security: nothing unpickles; user weights load with weights_only; attributes are data."""

from __future__ import annotations

import pickle
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

import featcache
from classifiers import load_head
from featcache.core.errors import WeightsError
from featcache.fitting.runs import load_run
from tests.conftest import make_images

FAST = dict(model="resnet18", weights="none", image_size=32, progress_bar=False)


class Payload:
    """Unpickling this runs code: the attack a weights file can carry. It writes ``marker`` (an absolute
    path, so the test sees it whatever the working directory of the code that ran it)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"import pathlib; pathlib.Path({self.marker!r}).write_text('yes')",))


def _spy_np_load(monkeypatch, log: Path) -> None:
    """Make np.load refuse allow_pickle=True and log the allow_pickle of every call to ``log``: a file,
    because the feature set is assembled in a forked child (store.write_isolated)."""
    import inspect

    real = np.load

    def checked(*args, **kwargs):
        allow = bool(inspect.signature(real).bind(*args, **kwargs).arguments.get("allow_pickle", False))
        with open(log, "a") as f:
            f.write(f"{allow}\n")
        if allow:
            raise AssertionError("np.load was called with allow_pickle=True")
        return real(*args, **kwargs)

    monkeypatch.setattr(np, "load", checked)


def test_feature_sets_runs_and_heads_load_without_unpickling(tmp_path, monkeypatch):
    log = tmp_path / "np_load.log"
    _spy_np_load(monkeypatch, log)  # before extracting: the staged batches are read back with np.load
    data = make_images(tmp_path / "data", per_class=6)
    result = featcache.extract(data, cache_dir=tmp_path / "c", **FAST)
    assert log.exists() and set(log.read_text().split()) == {"False"}, "extraction reads its staged batches with np.load"
    run = featcache.fit(head="logreg", params={"C": [1.0]}, cv=3, cache_dir=tmp_path / "c", runs_dir=tmp_path / "r",
                        progress_bar=False)

    def refuse(*args, **kwargs):
        raise AssertionError("something tried to unpickle")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    with featcache.open_features(result.id, tmp_path / "c") as fs:
        assert fs.load().shape[0] == 12 and fs.meta["model"] == "resnet18"
    assert load_run(run.path).params.head == "logreg"
    assert load_head(run.path / "head").predict(np.zeros((1, 512, 1, 1), np.float32)).shape == (1,)
    predictions = featcache.predict([data / "cats"], run.path, cache_dir=tmp_path / "c", progress_bar=False)
    assert len(predictions) == 6
    assert set(log.read_text().split()) == {"False"}


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # the hostile file is written with protocol 4 on purpose
def test_a_weights_file_carrying_code_is_refused_and_never_run(tmp_path):
    canary = tmp_path / "canary"
    pickle.loads(pickle.dumps(Payload(canary)))
    assert canary.exists()  # the payload does run when unpickled: the check below can fail
    marker = tmp_path / "PWNED"
    evil = tmp_path / "evil.pth"
    with open(evil, "wb") as f:
        pickle.dump({"conv1.weight": Payload(marker)}, f)
    data = make_images(tmp_path / "data", per_class=2)
    try:
        featcache.extract(data, cache_dir=tmp_path / "c", **{**FAST, "weights": str(evil)})
        error = None
    except Exception as err:  # noqa: BLE001 - which error it is is asserted after the payload check
        error = err
    assert not marker.exists(), "reading the weights file ran the code it carries"
    assert isinstance(error, WeightsError) and "cannot read weights file" in str(error), repr(error)


def test_hdf5_attributes_are_parsed_as_data_never_evaluated(tmp_path):
    data = make_images(tmp_path / "data", per_class=3)
    result = featcache.extract(data, cache_dir=tmp_path / "c", **FAST)
    marker = tmp_path / "PWNED"
    with h5py.File(result.path, "r+") as f:
        f.attrs["model"] = f"__import__('pathlib').Path({str(marker)!r}).write_text('yes')"
        f.attrs["preprocess"] = '{"crop_size": 32, "note": "__import__(\\"os\\")"}'
    with featcache.open_features(result.id, tmp_path / "c") as fs:
        assert fs.meta["model"].startswith("__import__")  # a plain string
        assert fs.meta["preprocess"]["note"] == '__import__("os")'
    assert not marker.exists()


def test_user_weights_go_through_torch_load_weights_only(tmp_path, monkeypatch):
    from torchvision.models import resnet18

    path = tmp_path / "w.pth"
    torch.save(resnet18().state_dict(), path)
    calls = []
    real = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    data = make_images(tmp_path / "data", per_class=2)
    featcache.extract(data, cache_dir=tmp_path / "c", **{**FAST, "weights": str(path)})
    assert calls and all(c is True for c in calls)
