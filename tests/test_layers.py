"""The package's layout holds: layers that import only downwards, no import circle, modules of one job and a
readable size, no private name reached across modules, Pyro/torch internals in one module only.

Read from the source with ``ast`` (imports inside functions count too), so the test needs nothing installed
beyond the standard library.
"""

import ast
import os
import re

import pytest

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "pyro_vae")

#: the layers, top (imported by everything) to bottom (imports everything); each may import only itself and
#: the layers before it. ``extended`` is the public facade of the models with labels; ``__init__`` the package.
LAYERS = ["errors", "checks", "files", "parts", "inference", "models", "data", "evaluate", "runs", "viz",
          "training", "cli", "extended", "__init__"]
MAX_LINES = 600
#: the one module allowed Pyro's and torch's private names (it lists them at its top)
INTERNALS_MODULE = "inference.replay"


def _modules():
    """``{dotted name under pyro_vae: path}``; a package's ``__init__`` is named by the package."""
    found = {}
    for folder, _, files in os.walk(ROOT):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                parts = os.path.relpath(path, ROOT)[:-3].split(os.sep)
                if parts[-1] == "__init__":
                    parts = parts[:-1]
                found[".".join(parts) or "__init__"] = path
    return found


MODULES = _modules()


def _package_of(module):
    """The package a module's relative imports start from."""
    path = MODULES[module]
    if os.path.basename(path) == "__init__.py":
        return [] if module == "__init__" else module.split(".")
    return module.split(".")[:-1]


def _imports(module):
    """``[(imported module, names, line)]`` of every pyro_vae module ``module`` imports, at any depth."""
    tree = ast.parse(open(MODULES[module], encoding="utf-8").read())
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = _package_of(module)[: len(_package_of(module)) - (node.level - 1)]
            elif node.module and node.module.split(".")[0] == "pyro_vae":
                base = []
            else:
                continue
            target = base + (node.module.split(".")[1:] if not node.level and node.module else
                             (node.module.split(".") if node.module else []))
            names = [a.name for a in node.names]
            for name in names:   # `from . import quality`: the submodule itself
                sub = ".".join(target + [name])
                if sub in MODULES:
                    out.append((sub, [], node.lineno))
            out.append((".".join(target) or "__init__", names, node.lineno))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "pyro_vae" and alias.name != "pyro_vae":
                    out.append((alias.name.split(".", 1)[1], [], node.lineno))
    # a package is imported before any module in it, so reaching a sibling through the package (`from . import
    # x`) is not an edge to the package itself
    return [(target, names, line) for target, names, line in out
            if target in MODULES and not _is_ancestor(target, module)]


def _is_ancestor(package, module):
    return package == "__init__" or module.startswith(package + ".")


def _layer(module):
    return LAYERS.index(module.split(".")[0])


def test_every_module_has_a_layer():
    assert {m.split(".")[0] for m in MODULES} <= set(LAYERS), sorted({m.split(".")[0] for m in MODULES} - set(LAYERS))


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_run_only_downwards(module):
    upward = [f"{module} imports {target} (line {line})" for target, _, line in _imports(module)
              if _layer(target) > _layer(module)]
    assert not upward, upward


def test_no_import_circle():
    graph = {m: {t for t, _, _ in _imports(m) if t != m} for m in MODULES}
    state, stack, circles = {}, [], []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                circles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module)
    assert not circles, [" -> ".join(c) for c in circles]


@pytest.mark.parametrize("module", sorted(MODULES))
def test_module_size(module):
    with open(MODULES[module], encoding="utf-8") as f:
        lines = sum(1 for _ in f)
    assert lines <= MAX_LINES, f"{module} has {lines} lines; split it by job (at most {MAX_LINES})"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_private_name_across_modules(module):
    private = [f"{module} imports {name} from {target} (line {line})" for target, names, line in _imports(module)
               if target != module for name in names if name.startswith("_") and not name.startswith("__")]
    assert not private, private


#: internals that do not look private: not in Pyro's or torch's documented API, so they may change in any release
KNOWN_INTERNALS = ("CompiledFunction", "_get_traces", "_PYRO_STACK", "_Subsample", "mark_static_address",
                   "_flatten_dense_tensors", "_unflatten_dense_tensors")
_PRIVATE_ATTRIBUTE = re.compile(r"\b(?:torch|pyro)(?:\.[A-Za-z]\w*)*\._[A-Za-z]\w*")


@pytest.mark.parametrize("module", sorted(set(MODULES) - {INTERNALS_MODULE}))
def test_private_pyro_and_torch_names_only_in_one_module(module):
    source = open(MODULES[module], encoding="utf-8").read()
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in ("torch", "pyro"):
            found += [f"from {node.module} import {a.name}" for a in node.names
                      if a.name.startswith("_") or any(p.startswith("_") for p in node.module.split("."))]
        elif isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.split(".")[0] in ("torch", "pyro")
                      and any(p.startswith("_") for p in a.name.split("."))]
    code = "\n".join(line.split("#")[0] for line in source.splitlines())   # comments may name them
    found += _PRIVATE_ATTRIBUTE.findall(code)
    found += [name for name in KNOWN_INTERNALS if re.search(rf"\b{name}\b", code)]
    assert not found, f"{module} uses private Pyro/torch names {found}; only pyro_vae/{INTERNALS_MODULE}.py may"


def test_the_internals_module_lists_what_it_relies_on():
    source = open(MODULES[INTERNALS_MODULE], encoding="utf-8").read()
    head = source[: source.index("\nimport") if "\nimport" in source else len(source)]
    used = {name for name in re.findall(r"\b_[A-Za-z]\w*", "\n".join(
        line.split("#")[0] for line in source.splitlines() if "import" in line or "torch." in line or "pyro" in line))
        if not name.startswith("__")}
    used = {n for n in used if re.search(rf"(?:torch|pyro)[\w.]*\b{n}\b|import[^\n]*\b{n}\b", source)}
    assert used, "the internals module uses no private name: this test should then name another module"
    missing = sorted(n for n in used if n not in head)
    assert not missing, f"{INTERNALS_MODULE} uses {missing} without listing them at its top"


def test_pyro_has_an_upper_bound():
    setup = open(os.path.join(os.path.dirname(ROOT), "setup.cfg"), encoding="utf-8").read()
    assert re.search(r"pyro-ppl\s*>=\s*1\.9\s*,\s*<\s*1\.10", setup), \
        "pin pyro-ppl to the range the internals are tested on"
