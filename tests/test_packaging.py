"""The README's set-up commands and CI agree, and the package declares exactly what it imports."""

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def test_ci_runs_the_readme_test_command_verbatim():
    readme = (REPO / "README.md").read_text()
    commands = re.findall(r"```bash\n(pip install torch==2\.13\.0 && .+)\n```", readme)
    assert len(commands) == 2, "README needs the install+run command and the test command"
    assert commands[0].endswith("python train.py") and commands[1].endswith("python -m pytest")
    assert commands[1] in (REPO / ".ci" / "run").read_text().splitlines()


def requirement_names(requirements: list[str]) -> dict[str, str]:
    return {re.split(r"[<>=\[ ]", dep)[0].lower(): dep for dep in requirements}


def imported_distributions() -> set[str]:
    """Distributions of every third-party module imported by prune_recover/ and train.py."""
    modules = set()
    for path in [*(REPO / "prune_recover").rglob("*.py"), REPO / "train.py"]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                modules.add(node.module.split(".")[0])
    third_party = modules - set(sys.stdlib_module_names) - {"prune_recover"}
    owners = packages_distributions()
    return {owners[module][0].lower().replace("_", "-") for module in third_party}


def test_every_import_is_declared_and_every_declaration_is_used():
    declared = requirement_names(PROJECT["dependencies"])
    optional = {name for extra in PROJECT["optional-dependencies"].values() for name in requirement_names(extra)}
    imported = imported_distributions()
    assert imported - set(declared) - optional == set(), "imported but not declared"
    # gguf is read through transformers (the .gguf loader of the bundled model), not imported here
    assert set(declared) - imported == {"gguf"}, "declared but never imported"
    assert {"matplotlib", "lm-eval"} <= optional and "matplotlib" not in declared


def test_every_dependency_has_a_tested_upper_cap_and_python_matches_the_tests():
    extras = [dep for extra in PROJECT["optional-dependencies"].values() for dep in extra]
    for requirement in [*PROJECT["dependencies"], *extras]:
        assert "<" in requirement, f"{requirement} has no upper cap"
    assert PROJECT["requires-python"] == ">=3.11"  # tomllib (this file) and the tested interpreter
