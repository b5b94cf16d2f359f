"""Issue 21: the tree keeps its shape. Parsed (ast), never imported, so a test run cannot hide a cycle:

* no import cycle among featcache's modules, the imports inside functions included;
* packages in layers, each importing only from its own layer or below (core, config, backbones, store,
  extraction, report, fitting, audit, sweeps), ``classifiers`` never importing featcache or the CLI;
* in featcache, no import of the project's own modules inside a function, and other imports inside
  functions only for the heavy optional libraries, each with its reason on the line (cli.py's commands
  import the library module they call, which keeps ``featcache --help`` instant);
* the CLI's options read their defaults and choices from the records they fill.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import click
import pytest

ROOT = Path(__file__).resolve().parent.parent
LAYERS = ("core", "config", "backbones", "store", "extraction", "report", "fitting", "audit", "sweeps")
LAZY = {"ray", "open_clip", "timm", "matplotlib", "huggingface_hub", "requests"}


def _modules() -> dict[str, Path]:
    out = {"cli": ROOT / "cli.py"}
    for top in ("featcache", "classifiers"):
        for path in sorted((ROOT / top).rglob("*.py")):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            out[name.removesuffix(".__init__")] = path
    return out


MODULES = _modules()


def _imports(name: str) -> list[tuple[str, ast.stmt, bool]]:
    """(imported module of this project or library, statement, inside a function) for every import."""
    path = MODULES[name]
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}

    def in_function(node) -> bool:
        while node in parents:
            node = parents[node]
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                return True
        return False

    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        else:
            continue
        out += [(t, node, in_function(node)) for t in targets]
    return out


def _own(target: str) -> str | None:
    """The project module an import names (a submodule's package where the name is an attribute)."""
    while target and target not in MODULES:
        target = target.rpartition(".")[0]
    return target or None


GRAPH = {m: {o for t, _, _ in _imports(m) if (o := _own(t)) and o != m} for m in MODULES}


def _layer(module: str) -> int | None:
    parts = module.split(".")
    return LAYERS.index(parts[1]) if parts[0] == "featcache" and len(parts) > 1 and parts[1] in LAYERS else None


def test_no_import_cycle():
    index, low, stack, on, cycles, counter = {}, {}, [], set(), [], [0]
    sys.setrecursionlimit(10000)

    def strong(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in GRAPH[v]:
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in GRAPH:
        if v not in index:
            strong(v)
    assert cycles == []


def test_every_module_is_in_a_layer_and_imports_only_downwards():
    for module, targets in GRAPH.items():
        if module.startswith("featcache."):
            assert _layer(module) is not None, f"{module} is in no layer: put it in one of {LAYERS}"
            for target in targets - {"featcache"}:
                if target.startswith("classifiers"):  # the heads: below every featcache layer, knowing nothing of it
                    continue
                assert _layer(target) is not None, (module, target)
                assert _layer(target) <= _layer(module), f"{module} imports {target} from a higher layer"
        if module.startswith("classifiers"):
            assert not any(t.startswith(("featcache", "cli")) for t in targets), f"{module} imports {targets}"
        if module != "cli":
            assert "cli" not in targets, module


def test_imports_inside_functions_are_only_for_heavy_optional_libraries():
    for module in MODULES:
        if not module.startswith("featcache"):  # cli.py's commands import what they call; classifiers is its own library
            continue
        lines = MODULES[module].read_text().splitlines()
        for target, node, inside in _imports(module):
            if not inside:
                continue
            assert _own(target) is None, f"{module}:{node.lineno} imports {target} inside a function: import it at the top"
            assert target.split(".")[0] in LAZY, f"{module}:{node.lineno} imports {target} inside a function"
            assert "#" in lines[node.end_lineno - 1], f"{module}:{node.lineno}: say why {target} is imported on use"


def test_the_command_line_loads_no_heavy_library_before_a_command_runs():
    code = ("import sys, cli; heavy = {'torch', 'sklearn', 'h5py', 'timm', 'matplotlib', 'scipy'} & set(sys.modules); "
            "print(sorted(heavy))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def _options(command: click.Command) -> dict[str, click.Option]:
    return {p.name: p for p in command.params if isinstance(p, click.Option)}


@pytest.mark.parametrize("command,record,own", [
    ("extract", "ExtractConfig", {"quiet", "as_json"}),
    ("fit", "FitConfig", {"quiet", "as_json", "params", "fixed"}),
])
def test_the_cli_options_are_the_records_fields_with_their_defaults(command, record, own):
    import cli
    from featcache.config import extract, fit

    cls = {"ExtractConfig": extract.ExtractConfig, "FitConfig": fit.FitConfig}[record]
    options = _options(cli.main.commands[command])
    fields = {f.name: f for f in cls.__dataclass_fields__.values()}
    options_only = set(options) - set(fields) - own
    assert options_only == set(), f"options of `featcache {command}` that {record} does not have"
    record_only = set(fields) - set(options) - {"params", "head_params", "run_dir"}
    assert record_only == set(), f"{record} fields `featcache {command}` does not offer"
    for name, option in options.items():
        if name in fields and not option.multiple:
            assert option.default == fields[name].default, (name, option.default, fields[name].default)


def test_choice_lists_come_from_one_tuple_each():
    import cli
    from featcache.config import choices

    tuples = {v for k, v in vars(choices).items() if k.isupper() and isinstance(v, tuple)}
    for command in list(cli.main.commands.values()) + list(cli.cache.commands.values()):
        for option in _options(command).values():
            if isinstance(option.type, click.Choice) and command.name not in ("runs",):
                assert tuple(option.type.choices) in tuples, (command.name, option.name)


def test_the_head_help_names_every_registered_head():
    import cli
    from classifiers import list_heads

    assert sorted(cli.HEADS.split(", ")) == sorted(list_heads())


def test_no_package_is_a_flat_folder_of_everything():
    """The stage packages hold the modules; the top of featcache holds only the lazy API."""
    top = [p.name for p in (ROOT / "featcache").glob("*.py")]
    assert top == ["__init__.py"], top
    assert max(len(list((ROOT / "featcache" / pkg).glob("*.py"))) for pkg in LAYERS) <= 16
    assert all((ROOT / "featcache" / pkg / "__init__.py").is_file() for pkg in LAYERS)
    assert os.path.isdir(ROOT / "featcache" / "backbones")
