"""The README's set-up commands and CI agree, and the package declares what it imports."""

import re
from pathlib import Path

import tomllib

REPO = Path(__file__).resolve().parents[1]


def test_ci_runs_the_readme_test_command_verbatim():
    readme = (REPO / "README.md").read_text()
    commands = re.findall(r"```bash\n(pip install torch==2\.13\.0 && .+)\n```", readme)
    assert len(commands) == 2, "README needs the install+run command and the test command"
    assert commands[0].endswith("python train.py") and commands[1].endswith("python -m pytest")
    assert commands[1] in (REPO / ".ci" / "run").read_text().splitlines()


def test_declared_dependencies_cover_the_brief():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    names = {re.split(r"[<>=\[]", dep)[0].lower() for dep in project["dependencies"]}
    required = {"torch", "lightning", "transformers", "peft", "datasets", "wandb", "torchmetrics", "hydra-core", "gguf"}
    assert required | {"accelerate"} <= names
    assert project["optional-dependencies"]["dev"] and project["optional-dependencies"]["eval"]
