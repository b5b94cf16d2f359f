"""Issue 20: what `fit` is told is what it does. ``--set`` fixes a parameter (and takes it out of the
grid); conflicting, duplicate, multi-valued and non-finite values are refused; a head that diverged
is not saved as a run; --cv and --test-size are checked once, with numbers that add up, by fit,
audit and sweep alike. Real feature sets, real ``featcache`` subprocesses."""

from __future__ import annotations

import json

import numpy as np
import pytest

import featcache
from classifiers import ParamError, get_head, save_head
from featcache.core.errors import FeatcacheError
from featcache.fitting.runs import load_run
from tests.conftest import featcache as run_cli
from tests.conftest import make_images

EXTRACT = dict(model="resnet18", weights="none", image_size=64, progress_bar=False)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """18 images, 3 colour classes of 6: what a first try on a few photos looks like."""
    root = tmp_path_factory.mktemp("tiny")
    data = make_images(root / "data", classes=("red", "green", "blue"), per_class=6, size=(64, 64))
    result = featcache.extract(data, cache_dir=root / "cache", **EXTRACT)
    return {"root": root, "data": data, "cache": root / "cache", "id": result.id}


def _fails(*args, needles=()) -> str:
    r = run_cli(*args)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    err = r.stderr.strip()
    assert len(err.splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err
    return err


def _common(ws, runs):
    return ["--features", ws["id"], "--cache-dir", ws["cache"], "--runs-dir", runs, "-q"]


# --------------------------------------------------------------------------- --set is used, and recorded
def test_set_fixes_the_svm_c_takes_it_out_of_the_grid_and_the_run_records_it(tiny, tmp_path):
    r = run_cli("fit", "--set", "C=2", "--cv", "2", *_common(tiny, tmp_path / "runs"))
    assert r.returncode == 0, r.stderr
    assert "set C=2;" in r.stdout and "best defaults" not in r.stdout, r.stdout
    run = load_run(next(p for p in (tmp_path / "runs").iterdir() if p.is_dir()))  # beside the output marker
    assert run.params.grid == {} and run.params.fixed_params["C"] == 2.0 and run.params.head_params["C"] == 2.0
    assert run.metrics.cv_results["params"] == [{}]  # one candidate: C was not searched
    assert json.loads((run.path / "head" / "head.json").read_text())["params"]["C"] == 2.0
    assert run.head().C == 2.0
    assert "| fixed parameters | C=2, random_state=0 |" in (run.path / "report.md").read_text()


@pytest.mark.parametrize("head, name, value", [("ridge", "alpha", 3.0), ("logreg", "C", 2.0)])
def test_head_params_of_the_python_api_leave_the_default_grid(tiny, tmp_path, head, name, value):
    run = featcache.fit(head=head, features=tiny["id"], cache_dir=tiny["cache"], runs_dir=tmp_path / "runs", cv=2,
                        head_params={name: value}, progress_bar=False)
    assert run.params.grid == {} and run.params.fixed_params == {name: value}
    assert getattr(run.estimator, name) == value and getattr(run.head(), name) == value
    # a grid over the other parameter still runs, with this one fixed in every candidate
    other = featcache.fit(head=head, features=tiny["id"], cache_dir=tiny["cache"], runs_dir=tmp_path / "runs", cv=2,
                          params={"normalize": ["l2", "none"]}, head_params={name: value}, progress_bar=False)
    assert other.params.grid == {"normalize": ["l2", "none"]} and getattr(other.estimator, name) == value


@pytest.mark.parametrize("args, needles", [
    (["--set", "C=1,2"], ["--set C takes one value, got 2", "--param C=v1,v2"]),
    (["--param", "C=1", "--set", "C=2"], ["C is both searched (--param) and fixed (--set)", "not both"]),
    (["--param", "C=1", "--param", "C=2"], ["--param C is given twice", "give it once"]),
    (["--set", "C=1", "--set", "C=2"], ["--set C is given twice"]),
    (["--param", "C=1,,2"], ["has an empty value"]),
], ids=["set-two-values", "param-and-set", "param-twice", "set-twice", "empty-piece"])
def test_ambiguous_parameters_are_refused_in_one_line(tiny, tmp_path, args, needles):
    _fails("fit", *args, *_common(tiny, tmp_path / "runs"), needles=needles)
    assert not (tmp_path / "runs").exists()


def test_python_api_refuses_a_name_both_searched_and_fixed(tiny, tmp_path):
    with pytest.raises(ParamError, match="both searched"):
        featcache.fit(features=tiny["id"], cache_dir=tiny["cache"], runs_dir=tmp_path / "runs", params={"C": [1.0]},
                      head_params={"C": 2.0}, progress_bar=False)
    with pytest.raises(ParamError, match="unknown parameter of the svm head 'CC'"):
        featcache.fit(features=tiny["id"], cache_dir=tiny["cache"], runs_dir=tmp_path / "runs", head_params={"CC": 2.0},
                      progress_bar=False)
    assert not (tmp_path / "runs").exists()


# --------------------------------------------------------------------------- non-finite values
@pytest.mark.parametrize("head, args, needle", [
    ("svm", ["--param", "C=inf"], "The 'C' parameter of the svm head must be a finite float > 0. Got inf."),
    ("svm", ["--param", "C=1,nan"], "must be a finite float > 0. Got nan."),
    ("ridge", ["--set", "alpha=1e400"], "The 'alpha' parameter of the ridge head must be a finite float > 0. Got inf."),
    ("mlp", ["--set", "learning_rate=inf"], "The 'learning_rate' parameter of the mlp head must be a finite float"),
    ("mlp", ["--set", "learning_rate=1e300"], "(0, 3.40282e+38]. Got 1e+300."),  # beyond float32: torch would overflow
], ids=["svm-inf", "svm-nan", "ridge-1e400", "mlp-inf", "mlp-1e300"])
def test_non_finite_parameters_are_refused_before_any_run(tiny, tmp_path, head, args, needle):
    _fails("fit", "--head", head, *args, "--cv", "2", *_common(tiny, tmp_path / "runs"), needles=[needle])
    assert not (tmp_path / "runs").exists()


def test_non_finite_parameters_are_refused_by_the_heads_themselves():
    X, y = np.random.default_rng(0).normal(size=(20, 4)).astype(np.float32), np.arange(20) % 2
    for name, params in [("svm", {"C": float("inf")}), ("logreg", {"C": float("nan")}), ("ridge", {"alpha": float("inf")}),
                         ("svm", {"C": 10**400}), ("svm", {"class_weight": {0: float("inf")}}),
                         ("mlp", {"weight_decay": float("nan")})]:
        with pytest.raises(ParamError, match="finite"):
            get_head(name)(**params).fit(X, y)


def test_a_diverged_fit_fails_with_its_reason_and_leaves_no_run(tiny, tmp_path):
    """learning_rate 1e30 is finite, but Adam's first steps turn every weight into NaN."""
    err = _fails("fit", "--head", "mlp", "--set", "learning_rate=1e30", "--set", "max_epochs=3", "--cv", "2",
                 *_common(tiny, tmp_path / "runs"), needles=["non-finite learned weights", "learning_rate=1e+30", "the fit diverged"])
    assert "module.0.weight" in err
    assert not (tmp_path / "runs").exists()
    X, y = np.random.default_rng(0).normal(size=(40, 8)).astype(np.float32), np.arange(40) % 2
    diverged = get_head("mlp")(learning_rate=1e30, max_epochs=3).fit(X, y)
    assert diverged.nonfinite_state()
    with pytest.raises(ValueError, match="hold NaN or inf"):
        save_head(diverged, tmp_path / "head")
    assert not (tmp_path / "head").exists()


# --------------------------------------------------------------------------- --cv and --test-size
@pytest.mark.parametrize("size, sides", [("0.9", "into 1 for training and 17 for test"), ("0.05", "into 17 for training and 1 for test")])
def test_test_size_that_empties_a_side_says_what_each_side_gets_and_what_works(tiny, tmp_path, size, sides):
    err = _fails("fit", "--test-size", size, "--cv", "2", *_common(tiny, tmp_path / "runs"),
                 needles=[f"--test-size {size} splits the 18 images (3 classes) {sides}", "per class",
                          "each side needs at least one image of every class; use a --test-size between "])
    low, high = err.split("between ")[1].split(" (with --cv 2)")[0].split(" and ")
    for good in (low, high):  # both ends of the range it names work, with the folds it names
        r = run_cli("fit", "--test-size", good, "--cv", "2", *_common(tiny, tmp_path / f"runs-{good}"))
        assert r.returncode == 0, r.stderr
    # the default --cv of the svm (10) cannot work on 6 images a class, whatever the split: it says so
    _fails("fit", "--test-size", size, *_common(tiny, tmp_path / "runs"),
           needles=["no --test-size leaves 10 images of every class for --cv 10: add images, or lower --cv"])


def test_cv_below_two_is_refused_not_read_as_the_default(tiny, tmp_path):
    for cv in ("0", "1"):
        _fails("fit", "--cv", cv, *_common(tiny, tmp_path / "runs"),
               needles=[f"--cv {cv} is too small: cross-validation needs at least 2 folds; use --cv 2 or more"])
    with pytest.raises(FeatcacheError, match="--cv 0 is too small"):
        featcache.fit(features=tiny["id"], cache_dir=tiny["cache"], runs_dir=tmp_path / "runs", cv=0, progress_bar=False)
    assert not (tmp_path / "runs").exists()


def test_a_class_left_with_one_cv_image_is_not_told_to_use_the_cv_it_gave(tmp_path):
    """14 images (6, 6 and 2): the test split takes one of the 2, and no --cv can work; the message
    used to say '--cv 2 is larger than the smallest class ...: use --cv 2 or fewer'."""
    data = make_images(tmp_path / "data", classes=("a", "b", "c"), per_class=6, size=(64, 64))
    for extra in sorted((data / "c").iterdir())[2:]:
        extra.unlink()
    result = featcache.extract(data, cache_dir=tmp_path / "cache", **EXTRACT)
    err = _fails("fit", "--cv", "2", "--features", result.id, "--cache-dir", tmp_path / "cache", "--runs-dir", tmp_path / "runs",
                 needles=["class c has 1 image left for cross-validation after the test split",
                          "needs at least 2 per class: use a --test-size between"])
    assert "use --cv" not in err
    size = err.split("between ")[1].split(" and ")[0]
    r = run_cli("fit", "--cv", "2", "--test-size", size, "--features", result.id, "--cache-dir", tmp_path / "cache",
                "--runs-dir", tmp_path / "runs", "-q")
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("option, value, message", [
    ("--cv", "0", "--cv 0 is too small: cross-validation needs at least 2 folds; use --cv 2 or more, or leave it out for the default"),
    ("--test-size", "1.5", "--test-size 1.5 must be between 0 and 1 (a fraction of the images, e.g. 0.2)"),
])
def test_fit_audit_and_sweep_check_cv_and_test_size_alike(tiny, tmp_path, option, value, message):
    fit = _fails("fit", option, value, *_common(tiny, tmp_path / "runs"))
    audit = _fails("audit", option, value, "--features", tiny["id"], "--cache-dir", tiny["cache"], "--out", tmp_path / "audit", "-q")
    sweep = _fails("sweep", "--data", tiny["data"], option, value, "--out", tmp_path / "sweep", "--cache-dir", tiny["cache"], "-q")
    assert fit == audit == f"Error: {message}"
    assert sweep == f"Error: invalid sweep (1 problem): {message}"
    assert not any((tmp_path / d).exists() for d in ("runs", "audit", "sweep"))


def test_sweep_refuses_a_head_parameter_given_twice():
    from featcache.sweeps.sweep import plan_from_options

    plan = plan_from_options(heads=["svm"], params=["svm.C=1", "svm.C=2"])
    assert "--param svm.C is given twice: give it once, e.g. --param svm.C=v1,v2" in plan.problems
    assert plan_from_options(heads=["svm"], params=["svm.C=1,2"]).problems == []
