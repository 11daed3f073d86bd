"""Write one benchmark's section of docs/BENCHMARKS.md between its own markers, leaving the rest alone."""

from __future__ import annotations

import platform
import re
from pathlib import Path

import torch

from prune_recover.jobs.configs import cpu_precision, cpuinfo_field

BENCHMARKS = Path(__file__).resolve().parents[1] / "docs" / "BENCHMARKS.md"
HEADER = (
    "# Benchmarks\n\n"
    "Every figure below was printed by the command shown with it "
    "(the commit that added a section holds the code that measured it).\n"
)


def machine(cpuinfo: str | Path = "/proc/cpuinfo", device: str = "cpu") -> str:
    """One line describing where the numbers were measured: the GPU for a `device` of `cuda` (the rows ran there),
    else the CPU's model and whether it has bfloat16 instructions (which decide the default job's precision and every
    bf16 timing), also on a machine that has a GPU the rows did not use."""
    if torch.device(device).type == "cuda":
        name = torch.cuda.get_device_name(torch.device(device))
    else:
        bf16 = "bfloat16 instructions" if cpu_precision(cpuinfo) == "bf16-mixed" else "no bfloat16 instructions"
        model = cpuinfo_field("model name", cpuinfo) or "unknown model"
        name = f"CPU ({model}, {torch.get_num_threads()} threads, {bf16})"
    return f"{name}, torch {torch.__version__}, Python {platform.python_version()}"


def write_section(name: str, body: str, path: Path = BENCHMARKS) -> None:
    """Replace (or append) the section delimited by `<!-- name:start -->` / `<!-- name:end -->`."""
    text = path.read_text() if path.exists() else HEADER
    block = f"<!-- {name}:start -->\n{body.rstrip()}\n<!-- {name}:end -->"
    pattern = re.compile(rf"<!-- {re.escape(name)}:start -->.*?<!-- {re.escape(name)}:end -->", re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else f"{text.rstrip()}\n\n{block}\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def zeroshot_cells(result: dict) -> list[str]:
    """Each zero-shot task's headline metric ± its standard error, in suite order, from a report's result."""
    from prune_recover.evaluation.tasks import ZEROSHOT_TASKS

    cells = []
    for task, (_, metric) in ZEROSHOT_TASKS.items():
        scores = result["tasks"][task]
        cells.append(f"{scores[metric]:.3f} ± {scores[metric + '_stderr']:.3f}")
    return cells
