"""``--param NAME=v1,v2,...`` (searched) and ``--set NAME=VALUE`` (fixed) -> a typed search grid and
fixed parameters, checked against the head's own parameter rules.

A parameter is either searched or fixed, never both, so what a run records is what its head used:
``--set C=2`` takes C out of the head's default grid; a name given to both options, a name given
twice, and a ``--set`` with several values are refused (each used to be dropped silently).
"""

from __future__ import annotations

from classifiers import ParamError
from classifiers.registry import unknown_message
from featcache.fitting.search import candidates

_TRUE, _FALSE, _NONE = {"true", "yes", "on"}, {"false", "no", "off"}, {"none", "null"}
_FORMS = {"--param": ("NAME=v1,v2,...", "--param C=0.1,1,10"), "--set": ("NAME=VALUE", "--set C=2")}


def parse_params(head_cls, items: list[str] | tuple[str, ...], option: str = "--param") -> dict[str, list]:
    """["C=0.1,1", "normalize=l2,none"] -> {"C": [0.1, 1.0], "normalize": ["l2", "none"]}.

    ``option`` ("--param" or "--set") names the option in messages. Values are typed here; whether
    the head accepts them (bounds, finiteness) is ``check_grid``'s question."""
    form, example = _FORMS[option]
    grid: dict[str, list] = {}
    for item in items:
        name, sep, raw = item.partition("=")
        name = name.strip()
        if not sep or not name or not raw.strip():
            raise ParamError(f"{option} {item!r} is not {form}: e.g. {example}")
        _check_name(head_cls, name)
        if name in grid:
            raise ParamError(f"{option} {name} is given twice: give it once, e.g. {option} {name}={'v1,v2' if option == '--param' else 'VALUE'}")
        pieces = [v.strip() for v in raw.split(",")]
        if not all(pieces):
            raise ParamError(f"{option} {item!r} has an empty value: separate values with single commas, e.g. {example}")
        grid[name] = [convert(head_cls, name, v, option) for v in pieces]
    return grid


def parse_fixed(head_cls, items: list[str] | tuple[str, ...]) -> dict:
    """["C=2"] -> {"C": 2.0}: one value per name (several are a search: ``--param``)."""
    fixed = parse_params(head_cls, items, option="--set")
    for name, values in fixed.items():
        if len(values) != 1:
            raise ParamError(f"--set {name} takes one value, got {len(values)}: search several with --param {name}=v1,v2 instead")
    return {name: values[0] for name, values in fixed.items()}


def convert(head_cls, name: str, text: str, option: str = "--param"):
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
    raise ParamError(f"{option} {f'{name}={text}'!r}: the {name!r} parameter of the {head_cls.name} head must be {rule.describe()}")


def resolve_grid(head_cls, params: dict[str, list] | None, fixed: dict | None) -> tuple[dict[str, list], dict]:
    """(grid to search, fixed parameters) from ``--param`` (None: the head's default grid) and ``--set``.

    A fixed name leaves the default grid; one that is also in an explicit grid is refused."""
    fixed = dict(fixed or {})
    for name in fixed:
        _check_name(head_cls, name)
    if params is None:
        grid = {name: list(values) for name, values in head_cls.default_grid.items() if name not in fixed}
    else:
        grid = dict(params)
        both = sorted(set(grid) & set(fixed))
        if both:
            name = both[0]
            raise ParamError(f"{name} is both searched (--param) and fixed (--set): search it with --param {name}=v1,v2 "
                             f"or fix it with --set {name}=VALUE, not both")
    return grid, fixed


def check_grid(head_cls, grid: dict[str, list]) -> None:
    """Raise the head's own message for the first value it rejects, before any fitting."""
    for name, values in grid.items():
        _check_name(head_cls, name)
        if not isinstance(values, (list, tuple)) or not values:
            raise ParamError(f"the values of {name} to search must be a non-empty list, e.g. {name}=[0.1, 1, 10]; got {values!r}")
    for candidate in candidates(grid):
        head_cls(**candidate)._check_params()


def _check_name(head_cls, name: str) -> None:
    rules = head_cls._param_rules
    if name not in rules:
        known = ", ".join(sorted(rules))
        raise ParamError(f"{unknown_message(f'parameter of the {head_cls.name} head', name, rules)} (parameters: {known})")
