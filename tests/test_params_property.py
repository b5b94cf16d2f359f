"""Properties of ``--param`` / ``--set`` parsing (issue 20): whatever text a user types, the result is
either one ParamError line, or a grid and fixed values that the head accepts and that are finite."""

from __future__ import annotations

import math

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from classifiers import ParamError, get_head, list_heads
from featcache.fitting.params import check_grid, parse_fixed, parse_params, resolve_grid

HEADS = list_heads()
# What people (and fuzzers) type: non-finite and out-of-range numbers, empty pieces, separators, spaces,
# other digits, line breaks (a message must stay one line).
AWKWARD = ["inf", "-inf", "Infinity", "nan", "NaN", "-nan", "1e400", "-1e400", "1e-400", "1e308", "3.5e38", "0", "-0", "-1",
           "", " ", ",", "1,,2", "1,", ",1", "=", "a=b", "1=2", "１", "٣", "1_000", " 2 ", "0x10", "1e", ".", "true", "None",
           "auto", "balanced", "l2", "cpu", "cuda:0", "\n1", "1\r", "1\n2", "a\rb", "x\u2028y", "\x1b[2J", "C=1"]
values = st.one_of(st.sampled_from(AWKWARD), st.text(max_size=12),
                   st.floats(allow_nan=True, allow_infinity=True).map(repr), st.integers(-10**3, 10**400).map(str))
value_lists = st.lists(values, min_size=1, max_size=3).map(",".join)


@st.composite
def items(draw):
    """A list of NAME=VALUES items for one head: mostly its own parameter names, sometimes anything."""
    head = draw(st.sampled_from(HEADS))
    names = sorted(get_head(head)._param_rules)
    item = st.tuples(st.one_of(st.sampled_from(names), st.text(max_size=6)), value_lists).map(lambda nv: f"{nv[0]}={nv[1]}")
    return head, draw(st.lists(st.one_of(item, st.text(max_size=10)), min_size=1, max_size=3))


def _one_line(err: Exception) -> None:
    text = str(err)
    assert text and len(text.splitlines()) == 1 and "\n" not in text and "\r" not in text, repr(text)


def _accepted(head_cls, grid: dict, fixed: dict) -> None:
    for name, options in [*grid.items(), *((k, [v]) for k, v in fixed.items())]:
        rule = head_cls._param_rules[name]
        for value in options:
            assert rule.accepts(value), (name, value)
            if isinstance(value, float):
                assert math.isfinite(value), (name, value)


SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(items())
@example(("svm", ["C=inf"]))  # the cases found by hand in issue 20, always tried
@example(("mlp", ["learning_rate=1e400"]))
@example(("svm", ["C=1\n2"]))
@example(("logreg", ["normalize=l2,a\u2028b"]))
def test_param_text_gives_one_error_line_or_a_grid_the_head_accepts(case):
    head, texts = case
    head_cls = get_head(head)
    try:
        grid, fixed = resolve_grid(head_cls, parse_params(head_cls, texts), None)
        check_grid(head_cls, {**{k: [v] for k, v in fixed.items()}, **grid})
    except ParamError as err:
        _one_line(err)
        return
    _accepted(head_cls, grid, fixed)


@SETTINGS
@given(items(), st.lists(values, max_size=2))
@example(("svm", ["C=2"]), ["1"])
@example(("mlp", ["learning_rate=inf"]), [])
@example(("svm", ["C=1,2"]), [])
def test_set_text_gives_one_error_line_or_fixed_values_the_head_accepts(case, more):
    head, texts = case
    head_cls = get_head(head)
    searched = [f"{texts[0].partition('=')[0]}={v}" for v in more[:1]]  # sometimes the same name searched too
    try:
        fixed = parse_fixed(head_cls, texts)
        grid, fixed = resolve_grid(head_cls, parse_params(head_cls, searched) if searched else None, fixed)
        check_grid(head_cls, {**{k: [v] for k, v in fixed.items()}, **grid})
    except ParamError as err:
        _one_line(err)
        return
    assert not set(grid) & set(fixed)  # a fixed name is never searched as well
    assert not set(head_cls.default_grid) & set(fixed) & set(grid)
    _accepted(head_cls, grid, fixed)
