"""Pruning cost on SmolLM2-135M at 40%: every scorer's pruning step against one forward pass and optipfair's hybrid.

Command (about 30 minutes on a 2-core CPU with bfloat16 instructions):
    python bench/prune_cost.py [--rounds 3] [--only ROW ...] [--section prune_cost] [--model smollm2-135m]
ROW is one of `forward` (the reference), the keys of CASES and PEERS; a section other than `prune_cost` keeps
another machine's table beside this one's; `--model` names another model (any name `load_model` takes: a local
directory, a hub id in the local cache), pruned by the same rows. `reconstruct` and `reconstruct-e1` are activation +
refit with bench/layer_reconstruction.py's reconstruction (sequential calibration, carried target, lr 2e-3) at 6 and 1
epochs, issue 12's best quality, whose cost it bounds at 3x optipfair's hybrid (about 15 and 8 minutes a round on a
2-core AVX2 CPU); `reconstruct-bf16` is `reconstruct` with its Adam steps under bfloat16 autocast
(`pruning.reconstruct.precision`), and `reconstruct-recipe` is `reconstruct-bf16` with the whole step (statistics
passes, the target's block runs) in the trainer's precision, as the default job runs it (bf16 autocast on a CPU with
bfloat16 instructions). The `one-product` row is `refit` with each Gram matrix computed as one
full product instead of `add_gram`'s panels on and above the diagonal: what the panels save, in the same run.
Calibration: 64 x 512 tokens of wiki.valid.raw (seed 0), batches of 4, the same for every row and for optipfair
0.4.2's data-driven hybrid (`pip install --no-deps optipfair==0.4.2`; without it its rows are skipped). Each row is
timed once per round on a fresh copy of the model, the rows one after another in every round, so that the
machine's drift between rounds touches them all; the table gives the median over the rounds (wall seconds) and
the range, and each ratio is the median of the per-round ratios (two rows of the same round). Rows run in float32
unless they say otherwise; "default recipe" runs the calibration pass in the trainer's precision as the default
job does (bf16 autocast on a CPU with bfloat16 instructions, float32 elsewhere).
Where CUDA is available, the model, the calibration batches and every row run on the GPU (the section's machine line
names it), each timing ends with the GPU's work done (`torch.cuda.synchronize`), and "default recipe" is the
precision of a GPU job (`trainer=gpu`, configs/trainer/gpu.yaml: bf16 autocast).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.markdown import machine, write_section  # noqa: E402
from bench.peer import INSTALL, optipfair_installed, optipfair_prune  # noqa: E402
from prune_recover.jobs.configs import cpu_precision, eval_precision  # noqa: E402
from prune_recover.lm import forward_precision  # noqa: E402
from prune_recover.models import UnknownModelError, load_model  # noqa: E402
from prune_recover.pruning import gram  # noqa: E402
from prune_recover.pruning.pruner import Pruner  # noqa: E402
from prune_recover.training.datamodule import CausalLMDataModule  # noqa: E402

COMMAND = "python bench/prune_cost.py"
DEFAULT_MODEL = "smollm2-135m"
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# the default job's forward precision here: a GPU job's (trainer=gpu, bf16-mixed), or the CPU trainer's
RECIPE_PRECISION = "bfloat16" if DEVICE == "cuda" else eval_precision(cpu_precision())
ONE_PANEL = 1 << 30  # panels wider than any Gram: the full product in one


def timed(fn) -> float:
    """Wall seconds of `fn()`, the GPU's queued work included."""
    start = time.perf_counter()
    fn()
    if DEVICE == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


FORWARD = "one forward pass over the calibration set (reference)"
OPTIPFAIR = "optipfair hybrid, 40%, float32 (its default)"
OPTIPFAIR_RECIPE = f"optipfair hybrid, 40%, {RECIPE_PRECISION} calibration pass"
DEFAULT_RECIPE = f"activation + refit, 40%, default recipe ({RECIPE_PRECISION} calibration pass)"
OBS = "obs + refit, 40% (issue 12's joint selector), float32"
REFIT = "activation + refit, 40% (the default scorer), float32"
ONE_PRODUCT = "activation + refit, 40%, float32, the Gram as one product (as before 7b250d2)"
RECONSTRUCT = "activation + refit + reconstruction (6 epochs), 40%, float32"
RECONSTRUCT_E1 = "activation + refit + reconstruction (1 epoch), 40%, float32"
RECONSTRUCT_BF16 = "activation + refit + reconstruction (6 epochs, bfloat16 Adam steps), 40%, float32 model"
RECONSTRUCT_RECIPE = (
    f"activation + refit + reconstruction (6 epochs, bfloat16 Adam steps), 40%, {RECIPE_PRECISION} calibration pass"
)


def reconstruction(epochs: int, precision: str = "float32") -> dict:
    """Pruner settings of bench/layer_reconstruction.py's documented runs (sequential, carried target, lr 2e-3)."""
    reconstruct = {"epochs": epochs, "lr": 2e-3, "target": "carried", "precision": precision}
    return dict(importance="activation", calibration_mode="sequential", reconstruct=reconstruct)


# key -> (label, Pruner settings, precision of the calibration pass)
CASES = {
    "maw": ("maw, 40% (weight-only, no refit)", dict(importance="maw", refit=False), "float32"),
    "mk": ("mk, 40% (weight-only, no refit)", dict(importance="mk", refit=False), "float32"),
    "activation": ("activation, 40%, no refit", dict(importance="activation", refit=False), "float32"),
    "refit": (REFIT, dict(importance="activation"), "float32"),
    "one-product": (ONE_PRODUCT, dict(importance="activation"), "float32"),
    "layerwise": (
        "activation + refit, 40%, layerwise",
        dict(importance="activation", calibration_mode="layerwise"),
        "float32",
    ),
    "obs": (OBS, dict(importance="obs"), "float32"),
    "taylor": ("taylor, 40%, no refit (forward + backward)", dict(importance="taylor", refit=False), "float32"),
    "default": (DEFAULT_RECIPE, {}, RECIPE_PRECISION),
    "reconstruct": (RECONSTRUCT, reconstruction(epochs=6), "float32"),
    "reconstruct-e1": (RECONSTRUCT_E1, reconstruction(epochs=1), "float32"),
    "reconstruct-bf16": (RECONSTRUCT_BF16, reconstruction(epochs=6, precision="bfloat16"), "float32"),
    "reconstruct-recipe": (RECONSTRUCT_RECIPE, reconstruction(epochs=6, precision="bfloat16"), RECIPE_PRECISION),
}
# key -> (label, precision of optipfair's calibration pass)
PEERS = {"optipfair": (OPTIPFAIR, "float32"), "optipfair-recipe": (OPTIPFAIR_RECIPE, RECIPE_PRECISION)}
ROWS = ["forward", *CASES, *PEERS]
# (numerator, denominator): the comparisons issue 12 asks for
RATIOS = [(OBS, OPTIPFAIR), (RECONSTRUCT, OPTIPFAIR), (RECONSTRUCT_E1, OPTIPFAIR), (RECONSTRUCT_BF16, OPTIPFAIR)]
RATIOS += [(RECONSTRUCT_BF16, RECONSTRUCT), (RECONSTRUCT_RECIPE, OPTIPFAIR), (RECONSTRUCT_RECIPE, OPTIPFAIR_RECIPE)]
RATIOS += [(RECONSTRUCT_RECIPE, RECONSTRUCT_BF16)]
RATIOS += [(DEFAULT_RECIPE, OPTIPFAIR), (DEFAULT_RECIPE, OPTIPFAIR_RECIPE)]
# and what computing the Gram in panels on and above the diagonal (`add_gram`) saves
RATIOS += [(REFIT, ONE_PRODUCT), (ONE_PRODUCT, OPTIPFAIR), (REFIT, OPTIPFAIR)]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="times each row is measured (the median is shown)")
    parser.add_argument("--only", nargs="+", choices=ROWS, help="measure only these rows (default: every row)")
    parser.add_argument("--section", default="prune_cost", help="the docs/BENCHMARKS.md section to write")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="the model to prune (default: %(default)s)")
    args = parser.parse_args()
    if args.rounds < 1:
        raise SystemExit(f"--rounds must be at least 1, got {args.rounds}")
    return args


def main() -> None:
    args = parse_args()
    rows = args.only or ROWS
    if any(row in PEERS for row in rows) and not optipfair_installed():
        if args.only:  # asked for by name: stop before the first row rather than after hours of the others
            raise SystemExit(f"--only names optipfair's rows, which need it installed ({INSTALL})")
        rows = [row for row in rows if row not in PEERS]
    try:
        base, tokenizer = load_model(args.model)
    except (UnknownModelError, FileNotFoundError) as error:  # before any row runs
        raise SystemExit(f"--model: {error}") from error
    base.to(DEVICE)
    data = CausalLMDataModule(tokenizer, wikitext_dir="../shared/data/wikitext-2-raw", calibration={"split": "valid"})
    batches = [batch.to(DEVICE) for batch in data.calibration_batches()]

    @torch.no_grad()
    def forward_pass():
        for batch in batches:
            base(input_ids=batch, use_cache=False)

    # label -> a function that runs the step once and returns its wall seconds
    steps = {FORWARD: lambda: timed(forward_pass)} if "forward" in rows else {}
    for key, (label, settings, precision) in CASES.items():

        def prune(settings=settings, precision=precision, panel=ONE_PANEL if key == "one-product" else gram.GRAM_PANEL):
            model = copy.deepcopy(base)
            pruner = Pruner(ratio=0.4, **settings)
            with forward_precision(precision, model.device), gram_panels(panel):
                return timed(lambda: pruner.prune(model, batches))

        if key in rows:
            steps[label] = prune
    for key, (label, precision) in PEERS.items():

        def peer(precision=precision):
            model = copy.deepcopy(base)
            return timed(lambda: optipfair_prune(model, 0.4, batches, precision))

        if key in rows:
            steps[label] = peer
    seconds: dict[str, list[float]] = {label: [] for label in steps}
    for round_number in range(args.rounds):
        for label, step in steps.items():
            measured = step()
            seconds[label].append(measured)
            print(round_number, label, round(measured, 2), flush=True)
    body = markdown(seconds, command(args), "SmolLM2-135M" if args.model == DEFAULT_MODEL else f"`{args.model}`")
    write_section(args.section, body)
    print(body)


@contextmanager
def gram_panels(columns: int) -> Iterator[None]:
    """Compute the Gram matrices in panels of `columns` (`gram.add_gram`): wider than the Gram, one product."""
    saved, gram.GRAM_PANEL = gram.GRAM_PANEL, columns
    try:
        yield
    finally:
        gram.GRAM_PANEL = saved


def command(args: argparse.Namespace) -> str:
    """The command line that reproduces this run (the default options left out)."""
    parts = [COMMAND]
    if args.rounds != 3:
        parts.append(f"--rounds {args.rounds}")
    if args.only:
        parts.append("--only " + " ".join(args.only))
    if args.section != "prune_cost":
        parts.append(f"--section {args.section}")
    if args.model != DEFAULT_MODEL:
        parts.append(f"--model {args.model}")
    return " ".join(parts)


def markdown(seconds: dict[str, list[float]], command: str, model: str = "SmolLM2-135M") -> str:
    rounds = len(next(iter(seconds.values())))
    lines = [
        f"## Pruning cost on {model} (40% of MLP neurons)",
        "",
        f"Command: `{command}`. Measured on {machine(device=DEVICE)}. Calibration: 64 x 512 tokens, batches of 4, "
        "the same for every row. Each row was timed once in each of "
        f"{rounds} rounds (the rows one after another in every round); the median and the range over the rounds. "
        "The pruning step includes its calibration pass.",
        "",
        "| what | seconds (median) | range |",
        "| --- | --- | --- |",
        *(
            f"| {label} | {statistics.median(values):.2f} | {min(values):.2f}-{max(values):.2f} |"
            for label, values in seconds.items()
        ),
    ]
    measured = [(top, bottom) for top, bottom in RATIOS if top in seconds and bottom in seconds]
    if measured:
        lines += ["", "| ratio (median of the per-round ratios) | value |", "| --- | --- |"]
        for top, bottom in measured:
            ratio = statistics.median(a / b for a, b in zip(seconds[top], seconds[bottom], strict=True))
            lines.append(f"| {top} / {bottom} | {ratio:.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
