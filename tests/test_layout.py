"""The package a newcomer walks: imports flow one way, public names are documented, files stay small."""

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "prune_recover"
COMMANDS = {"study", "deploy", "eval", "plan"}  # `python -m prune_recover.<name>`: they call a job, nothing else
# What each layer may import (besides itself); everything sits below `jobs`, and commands sit on top.
ALLOWED = {
    "bottom": set(),
    "data": {"bottom"},
    "pruning": {"bottom"},
    "evaluation": {"data", "bottom"},
    "training": {"pruning", "evaluation", "data", "bottom"},
    "jobs": {"training", "pruning", "evaluation", "data", "bottom"},
    "commands": {"jobs", "training", "pruning", "evaluation", "data", "bottom"},
}
MAX_LINES = 250


def layer_of(module: str) -> str:
    parts = module.split(".")[1:]  # drop "prune_recover"
    if not parts:
        return "bottom"
    if parts[0] in ALLOWED:
        return parts[0]
    return "commands" if parts[0] in COMMANDS else "bottom"


def module_name(path: Path) -> str:
    relative = path.relative_to(REPO).with_suffix("")
    parts = relative.parts[:-1] if relative.name == "__init__" else relative.parts
    return ".".join(parts)


def imports_of(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
    return {name for name in found if name.split(".")[0] == "prune_recover"}


def test_imports_flow_down_the_layers_only():
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        layer = layer_of(module_name(path))
        for imported in imports_of(path):
            target = layer_of(imported)
            if target != layer and target not in ALLOWED[layer]:
                wrong.append(f"{module_name(path)} ({layer}) imports {imported} ({target})")
    assert not wrong, "\n".join(wrong)


def test_every_module_and_public_function_and_class_has_a_docstring():
    missing = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text())
        if not ast.get_docstring(tree):
            missing.append(f"{module_name(path)} (module)")
        for node in tree.body:
            public = isinstance(node, ast.FunctionDef | ast.ClassDef) and not node.name.startswith("_")
            if public and not ast.get_docstring(node):
                missing.append(f"{module_name(path)}.{node.name}")
    assert not missing, missing


def test_every_subpackage_says_what_lives_there_and_what_it_may_import():
    for init in PACKAGE.glob("*/__init__.py"):
        assert "import" in ast.get_docstring(ast.parse(init.read_text())), init


def test_modules_stay_small():
    lengths = {module_name(path): len(path.read_text().splitlines()) for path in PACKAGE.rglob("*.py")}
    long = {name: lines for name, lines in lengths.items() if lines > MAX_LINES}
    assert not long, f"split these (over {MAX_LINES} lines): {long}"
