"""Pruning cost on SmolLM2-135M: weight-only scorers against one forward pass over the calibration set.

Command:
    python bench/prune_cost.py
Calibration: 64 x 512 tokens of wiki.valid.raw (seed 0), batches of 4. Each figure is one timed run
on a fresh copy of the model (wall seconds, this machine, nothing else running). Rows run in float32 unless
they say otherwise; "default recipe" runs the calibration pass in the trainer's precision as the default job
does (bf16 autocast on a CPU with bfloat16 instructions, float32 elsewhere).
"""

from __future__ import annotations

import copy
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.markdown import machine, write_section  # noqa: E402
from prune_recover.jobs.configs import cpu_precision, eval_precision  # noqa: E402
from prune_recover.lm import forward_precision  # noqa: E402
from prune_recover.models import load_model  # noqa: E402
from prune_recover.pruning.pruner import Pruner  # noqa: E402
from prune_recover.training.datamodule import CausalLMDataModule  # noqa: E402

COMMAND = "python bench/prune_cost.py"
RECIPE_PRECISION = eval_precision(cpu_precision())


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    base, tokenizer = load_model("smollm2-135m")
    data = CausalLMDataModule(tokenizer, wikitext_dir="../shared/data/wikitext-2-raw", calibration={"split": "valid"})
    batches = data.calibration_batches()

    @torch.no_grad()
    def forward_pass():
        for batch in batches:
            base(input_ids=batch, use_cache=False)

    rows = [("one forward pass over the calibration set (reference)", timed(forward_pass))]
    # (label, Pruner settings, precision of the calibration pass)
    cases = [
        ("maw, 40% (weight-only, no refit)", dict(importance="maw", refit=False), "float32"),
        ("mk, 40% (weight-only, no refit)", dict(importance="mk", refit=False), "float32"),
        ("activation, 40%, no refit", dict(importance="activation", refit=False), "float32"),
        ("activation + refit, 40% (the default scorer), float32", dict(importance="activation"), "float32"),
        ("activation + refit, 40%, layerwise", dict(importance="activation", calibration_mode="layerwise"), "float32"),
        ("taylor, 40%, no refit (forward + backward)", dict(importance="taylor", refit=False), "float32"),
        (f"activation + refit, 40%, default recipe ({RECIPE_PRECISION} calibration pass)", {}, RECIPE_PRECISION),
    ]
    for label, settings, precision in cases:
        model = copy.deepcopy(base)
        pruner = Pruner(ratio=0.4, **settings)

        def prune(model=model, pruner=pruner, precision=precision):
            with forward_precision(precision, model.device):
                pruner.prune(model, batches)

        rows.append((label, timed(prune)))
        print(rows[-1], flush=True)
    body = "\n".join(
        [
            "## Pruning cost on SmolLM2-135M (40% of MLP neurons)",
            "",
            f"Command: `{COMMAND}`. Measured on {machine()}. Calibration: 64 x 512 tokens, batches of 4.",
            "",
            "| what | seconds |",
            "| --- | --- |",
            *(f"| {label} | {seconds:.2f} |" for label, seconds in rows),
        ]
    )
    write_section("prune_cost", body)
    print(body)


if __name__ == "__main__":
    main()
