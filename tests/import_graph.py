"""The project's import graph, read from the source with `ast` (lazy imports inside functions included):
what dvc.yaml's dependencies and the layering rules are checked against."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("cait", "pipelines")


def module_file(name: str) -> Path | None:
    """The project file of a dotted module name (a package's __init__.py), None if not ours."""
    if name.split(".")[0] not in PACKAGES:
        return None
    base = REPO.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported_modules(path: Path) -> set[str]:
    """Every project module a file imports, at any depth of its code (lazy imports included)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = ".".join(path.relative_to(REPO).with_suffix("").parts[:-1])
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1])
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)  # `from pkg import module`
    return {n for n in names if module_file(n) is not None}


def import_closure(module: str) -> set[Path]:
    """Files of `module` and of every project module it reaches through imports (and their packages' __init__)."""
    seen: set[Path] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        parts = name.split(".")
        for i in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__.py and a/b/__init__.py
            path = module_file(".".join(parts[:i]))
            if path is not None and path not in seen:
                seen.add(path)
                todo.extend(imported_modules(path))
    return seen


def project_modules() -> dict[str, Path]:
    """Dotted name -> file of every module under cait/ and pipelines/ (a package by its own name)."""
    out = {}
    for package in PACKAGES:
        for path in sorted(REPO.joinpath(package).rglob("*.py")):
            name = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
            out[name] = path
    return out


def import_graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports (a `from pkg import name` counts as pkg.name when that is a
    module, else as pkg); packages' own __init__ imports are left out (they only hold docstrings)."""
    modules = project_modules()
    graph = {}
    for name, path in modules.items():
        targets = set()
        for imported in imported_modules(path):
            while imported not in modules and "." in imported:
                imported = imported.rsplit(".", 1)[0]
            if imported in modules and imported != name and modules[imported].name != "__init__.py":
                targets.add(imported)
        graph[name] = targets
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def write_dvc_code_deps(dvc_yaml: Path = REPO / "dvc.yaml") -> None:
    """Rewrite each stage's code dependencies (the `.py` lines of its deps) in dvc.yaml to the files its
    command imports, keeping every other line and comment: `python tests/import_graph.py`."""
    import re

    import yaml

    stages = yaml.safe_load(dvc_yaml.read_text())["stages"]
    out, stage, in_deps = [], None, False
    for line in dvc_yaml.read_text().splitlines(keepends=True):
        match = re.match(r"^  (\w+):\s*$", line)
        if match and match.group(1) in stages:
            stage = match.group(1)
        if re.match(r"^    deps:\s*$", line):
            in_deps = True
            out.append(line)
            module = stages[stage]["cmd"].split()[2]  # python -m <module>
            files = sorted(str(p.relative_to(REPO)) for p in import_closure(module)
                           if p.name != "__init__.py" or p.stat().st_size > 0)
            out += [f"      - {f}\n" for f in files]
            continue
        if in_deps and re.match(r"^      - ", line):
            if not line.split("#")[0].strip().endswith(".py"):
                out.append(line)
            continue
        in_deps = False
        out.append(line)
    dvc_yaml.write_text("".join(out))


if __name__ == "__main__":
    write_dvc_code_deps()
    print(f"{REPO / 'dvc.yaml'}: code dependencies rewritten from the import graph")
