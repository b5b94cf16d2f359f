"""``--param NAME=v1,v2,...`` -> a typed search grid, checked against the head's own parameter rules."""

from __future__ import annotations

from classifiers import ParamError
from classifiers.registry import unknown_message

_TRUE, _FALSE, _NONE = {"true", "yes", "on"}, {"false", "no", "off"}, {"none", "null"}


def parse_params(head_cls, items: list[str] | tuple[str, ...]) -> dict[str, list]:
    """["C=0.1,1", "normalize=l2,none"] -> {"C": [0.1, 1.0], "normalize": ["l2", "none"]}."""
    grid: dict[str, list] = {}
    for item in items:
        name, sep, raw = item.partition("=")
        name = name.strip()
        if not sep or not name or not raw.strip():
            raise ParamError(f"--param {item!r} is not NAME=v1,v2,...: e.g. --param C=0.1,1,10")
        rules = head_cls._param_rules
        if name not in rules:
            known = ", ".join(sorted(rules))
            raise ParamError(f"{unknown_message(f'parameter of the {head_cls.name} head', name, rules)} (parameters: {known})")
        grid[name] = [convert(head_cls, name, v.strip()) for v in raw.split(",")]
    return grid


def convert(head_cls, name: str, text: str):
    rule = head_cls._param_rules[name]
    lowered = text.lower()
    if lowered in _NONE and rule.none:
        return None
    if rule.options and text in rule.options:
        return text
    try:
        if rule.kind is bool:
            if lowered in _TRUE | _FALSE:
                return lowered in _TRUE
            raise ValueError
        if rule.kind is int:
            return int(text)
        if rule.kind is float:
            return float(text)
        if rule.kind is str:
            return text
    except ValueError:
        pass
    raise ParamError(f"--param {name}={text}: the {name!r} parameter of the {head_cls.name} head must be {rule.describe()}")


def check_grid(head_cls, grid: dict[str, list]) -> None:
    """Raise the head's own message for the first value it rejects, before any fitting."""
    from .search import candidates

    for candidate in candidates(grid):
        head_cls(**candidate)._check_params()
