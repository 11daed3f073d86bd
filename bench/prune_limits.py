"""What limits one-shot MLP width pruning of SmolLM2-135M at 40%: calibration size, the first position, each layer.

Three measurements, each WikiText-2 test perplexity on the protocol of bench/prune_scorers.py (16 x 1024
windows; the whole-model rows also on its held-out code), calibration windows of 512 tokens from wiki.valid.raw
(seed 0), everything (calibration and scoring) in the default recipe's precision (bfloat16 on a CPU with bf16
instructions, else float32):
- calibration size and draw: activation + refit and obs + refit on 64 windows (the issue's budget) and on 256,
  and on two other random draws of 64 windows (seeds 1 and 2), to see how far one draw moves the figures;
- the first position: activation selection with every window's first token left out of the statistics
  (massive activations: most of some layers' down_proj input energy sits there), refit on all tokens; the
  first position's energy is gathered in the same pass as the 64-window statistics;
- each layer alone: only layer i pruned (activation + refit, 64 windows), to see where the damage is and
  whether it adds up (the sum over layers of log(ppl_i / ppl_unpruned) against log(ppl_all / ppl_unpruned)).

With `--budget` instead (its own section): the issue's 32,768 calibration tokens cut into windows of 512, 256 and
1024 tokens (seed 0), and the refit's ridge (`pruning.refit_damp`) from 1e-6 to 1e-1 on the 512-token cut, all
activation + refit.

`--zero-shot ITEMS` also scores every whole-model row (not the one-layer rows) on the zero-shot suite, the first
ITEMS items of each task, and adds its average as a column.

Commands (about 20 minutes on a 2-core CPU: 18 min measured; `--budget` 23 min measured):
    python bench/prune_limits.py
    python bench/prune_limits.py --budget --zero-shot 100
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.domains import SEQ_LEN, add_zeroshot_flags, perplexity_by_domain, protocol_evaluator, zeroshot_evaluator  # noqa: E402
from bench.markdown import machine, write_section  # noqa: E402
from prune_recover.arch import gated_mlps  # noqa: E402
from prune_recover.jobs.configs import cpu_precision, eval_precision  # noqa: E402
from prune_recover.lm import forward_precision  # noqa: E402
from prune_recover.models import load_model  # noqa: E402
from prune_recover.pruning.calibration import NeuronStats, collect_activation_stats  # noqa: E402
from prune_recover.pruning.importance import SCORERS  # noqa: E402
from prune_recover.pruning.targets import ParamModel, WidthTarget  # noqa: E402
from prune_recover.pruning.width import prune_layer, prune_width  # noqa: E402
from prune_recover.training.datamodule import CausalLMDataModule  # noqa: E402

COMMAND = "python bench/prune_limits.py"
PRECISION = eval_precision(cpu_precision())
RATIO = 0.4
DAMP = 1e-4
# Calibration draws (windows of 512 tokens, seed): the issue's budget first (the per-layer rows use it), then 4x
# the tokens, then two other draws of the issue's budget.
DRAWS = ((64, 0), (256, 0), (64, 1), (64, 2))
# `--budget`: the issue's 32,768 tokens as (windows, tokens per window), and ridges tried on the first cut.
BUDGET_SHAPES = ((64, 512), (128, 256), (32, 1024))
RIDGES = (1e-6, 1e-2, 1e-1)


def main(budget: bool = False, zeroshot=None, items: int | None = None) -> None:
    """`zeroshot`: a task evaluator for the suite's first `items` items per task (its tokenizer is set here), or
    None for perplexity alone."""
    command = COMMAND + (" --budget" if budget else "") + (f" --zero-shot {items}" if zeroshot is not None else "")
    base, tokenizer = load_model("smollm2-135m")
    wikitext = "../shared/data/wikitext-2-raw"
    evaluator = protocol_evaluator(tokenizer, wikitext, PRECISION)
    if zeroshot is not None:
        zeroshot.tokenizer = tokenizer
    width = WidthTarget(ratio=RATIO).width(ParamModel.from_config(base.config))

    def calibration(windows: int, seed: int, seq_len: int = 512) -> list[torch.Tensor]:
        spec = {"split": "valid", "num_samples": windows, "seq_len": seq_len, "batch_size": 4, "seed": seed}
        return CausalLMDataModule(tokenizer, wikitext_dir=wikitext, calibration=spec).calibration_batches()

    def quality(model) -> tuple[float, float, float | None]:
        """WikiText-2 and code perplexity, and the zero-shot suite's average when it is asked for."""
        ppl = perplexity_by_domain(evaluator, model)
        return ppl["wikitext2"], ppl["code"], None if zeroshot is None else zeroshot(model)["average"]

    def pruned(stats, scorer: str = "activation", layers=None, damp: float = DAMP):
        model = copy.deepcopy(base)
        if layers is None:
            prune_width(model, width, SCORERS[scorer], stats, damp)
        else:  # only these layers: the model keeps mixed widths, fine for scoring
            for index in layers:
                prune_layer(gated_mlps(model)[index], width, SCORERS[scorer], stats[index], DAMP)
        return model

    unpruned = quality(base)
    print("unpruned", unpruned, flush=True)
    if budget:
        rows = budget_rows(calibration, quality, pruned, base)
        write_section("prune_limits_budget", budget_markdown(command, items, unpruned, rows))
        return
    rows = []
    stats, first = {}, {}
    for draw in DRAWS:
        windows, seed = draw
        start = time.perf_counter()
        with forward_precision(PRECISION, base.device), first_position_energy(base) as first[draw]:
            stats[draw] = collect_activation_stats(base, calibration(windows, seed), gram=True)
        seconds = time.perf_counter() - start
        for scorer in ("activation", "obs"):
            label = f"{scorer} + refit, {windows} x 512 calibration tokens, seed {seed}"
            rows.append((label, *quality(pruned(stats[draw], scorer))))
            print(rows[-1], f"(statistics pass {seconds:.0f} s)", flush=True)
    issue_budget = DRAWS[0]
    without_first = first_position_left_out(stats[issue_budget], first[issue_budget], windows=64)
    label = "activation + refit, 64 x 512 calibration tokens, seed 0, first position left out of the selection"
    rows.append((label, *quality(pruned(without_first))))
    print(rows[-1], flush=True)
    share = {i: float(first[issue_budget][i].sum() / layer.sum_sq.sum()) for i, layer in stats[issue_budget].items()}
    per_layer = []
    for index in range(len(gated_mlps(base))):
        per_layer.append(evaluator(pruned(stats[issue_budget], layers=[index]))[SEQ_LEN])
        print("layer", index, per_layer[-1], flush=True)
    write_section("prune_limits", markdown(command, items, unpruned, rows, per_layer, share))


def budget_rows(calibration, quality, pruned, base) -> list[tuple]:
    """Activation + refit on each cut of the issue's 32,768 tokens, then at each ridge on the first cut."""
    rows, first_cut = [], None
    for windows, seq_len in BUDGET_SHAPES:
        with forward_precision(PRECISION, base.device):
            stats = collect_activation_stats(base, calibration(windows, 0, seq_len), gram=True)
        first_cut = stats if first_cut is None else first_cut
        rows.append((f"{windows} x {seq_len} calibration tokens, ridge {DAMP}", *quality(pruned(stats))))
        print(rows[-1], flush=True)
    windows, seq_len = BUDGET_SHAPES[0]
    for ridge in RIDGES:
        rows.append(
            (f"{windows} x {seq_len} calibration tokens, ridge {ridge}", *quality(pruned(first_cut, damp=ridge)))
        )
        print(rows[-1], flush=True)
    return rows


@contextmanager
def first_position_energy(model):
    """`{layer: [intermediate] float64}`: the sum over windows of each neuron's squared down_proj input at the
    window's first position, from every forward pass run inside the block (alongside the statistics pass)."""
    mlps = gated_mlps(model)
    energy = {index: torch.zeros(mlp.intermediate_size, dtype=torch.float64) for index, mlp in enumerate(mlps)}

    def record(index):
        def hook(module, args):
            energy[index] += args[0][:, 0].float().square().sum(0, dtype=torch.float64)

        return hook

    handles = [mlp.down_proj.register_forward_pre_hook(record(index)) for index, mlp in enumerate(mlps)]
    try:
        yield energy
    finally:
        for handle in handles:
            handle.remove()


def first_position_left_out(stats: dict[int, NeuronStats], first: dict, windows: int) -> dict[int, NeuronStats]:
    """Activation norms without each window's first token; the Gram matrices (the refit) stay those of all tokens."""
    return {
        index: NeuronStats(sum_sq=layer.sum_sq - first[index], tokens=layer.tokens - windows, gram=layer.gram)
        for index, layer in stats.items()
    }


def unpruned_figures(unpruned_all: tuple) -> str:
    """The unpruned model's figures, in the order of the table's columns."""
    ppl, code, zeroshot = unpruned_all
    zeroshot_text = "" if zeroshot is None else f", zero-shot **{zeroshot:.3f}**"
    return f"Unpruned: **{ppl:.2f}** (code **{code:.2f}**{zeroshot_text})."


def quality_table(setting: str, rows: list) -> list[str]:
    """`| setting | WikiText-2 | code | (zero-shot average) |` for rows `(label, ppl, code, zero-shot or None)`."""
    zeroshot = rows[0][3] is not None
    header = f"| {setting} | WikiText-2 perplexity | code perplexity |" + (" zero-shot average |" if zeroshot else "")
    lines = [header, "| --- | --- | --- |" + (" --- |" if zeroshot else "")]
    for label, ppl, code, average in rows:
        lines.append(f"| {label} | {ppl:.2f} | {code:.2f} |" + (f" {average:.3f} |" if zeroshot else ""))
    return lines


def zeroshot_note(items: int | None) -> str:
    """What the zero-shot column is, when there is one."""
    if items is None:
        return ""
    return (
        " Zero-shot average: the headline metric of ARC-e, ARC-c, PIQA, WinoGrande, BoolQ, OpenBookQA and LAMBADA on "
        f"the first {items} items of each task, as in the general-quality table."
    )


def budget_markdown(command: str, items: int | None, unpruned_all: tuple, rows: list) -> str:
    return "\n".join(
        [
            "## Activation + refit at 40%: the same 32,768 calibration tokens cut three ways, and the refit's ridge",
            "",
            f"Command: `{command}`. Measured on {machine()}; calibration and scoring in {PRECISION}.",
            "",
            "SmolLM2-135M, 40% of MLP neurons removed by activation norm with the least-squares refit, no recovery; "
            "calibration windows drawn from `wiki.valid.raw` (seed 0); WikiText-2 test and held-out code perplexity "
            "on the scorer table's protocol (16 x 1024 windows each). The ridge is relative to the mean diagonal of "
            f"the kept neurons' Gram matrix (`pruning.refit_damp`, default {DAMP}).{zeroshot_note(items)} "
            + unpruned_figures(unpruned_all),
            "",
            *quality_table("calibration, ridge", rows),
        ]
    )


def markdown(command: str, items, unpruned_all: tuple, rows: list, per_layer: list[float], share: dict) -> str:
    unpruned = unpruned_all[0]
    damage = [math.log(ppl / unpruned) for ppl in per_layer]
    whole = rows[0][1]
    lines = [
        "## What limits one-shot width pruning at 40% (SmolLM2-135M, no recovery)",
        "",
        f"Command: `{command}`. Measured on {machine()}; calibration and scoring in {PRECISION} (the default "
        "recipe's precision on this machine).",
        "",
        "WikiText-2 test perplexity and perplexity on held-out Python code (16 x 1024 windows each, the protocol "
        "of the scorer table); calibration windows of 512 tokens drawn from `wiki.valid.raw` with the seed named "
        "(the scorer table's draw is seed 0); 40% of MLP "
        f"neurons removed, refit ridge {DAMP}.{zeroshot_note(items)} {unpruned_figures(unpruned_all)}",
        "",
        *quality_table("setting", rows),
        "",
        "Only one layer pruned (activation + refit, 64 x 512 calibration tokens, seed 0), and the share of that "
        "layer's down_proj input energy (sum of squares) at the first position of the calibration windows:",
        "",
        "| layer | " + " | ".join(str(index) for index in range(len(per_layer))) + " |",
        "| --- | " + " | ".join("---" for _ in per_layer) + " |",
        "| perplexity | " + " | ".join(f"{ppl:.2f}" for ppl in per_layer) + " |",
        "| first-position energy | " + " | ".join(f"{share[index]:.2f}" for index in range(len(per_layer))) + " |",
        "",
        f"Sum over layers of log(ppl_layer / ppl_unpruned): {sum(damage):.3f}; all layers pruned together: "
        f"log({whole:.2f} / {unpruned:.2f}) = {math.log(whole / unpruned):.3f}. Reaching 34 ppl means "
        f"log(34 / {unpruned:.2f}) = {math.log(34 / unpruned):.3f}.",
    ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> tuple[bool, object, int | None]:
    """`(--budget, the zero-shot task evaluator or None, its items per task)`; a bad item count or a missing suite
    stops here, before the model loads."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--budget", action="store_true", help="the calibration cuts and ridges, in their own section")
    add_zeroshot_flags(parser)
    args = parser.parse_args(argv)
    return args.budget, zeroshot_evaluator(args), args.zero_shot


if __name__ == "__main__":
    main(*parse_args())
