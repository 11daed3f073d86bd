"""Every importance scorer at 20/40/60% MLP pruning on SmolLM2-135M, next to optipfair 0.4.2.

Protocol: WikiText-2 test read as one string, tokenized once, first 16 non-overlapping windows of
1024 tokens (prune_recover/evaluation/perplexity.py), and the same on held-out Python code (bench/domains.py).
Calibration: 64 windows x 512 tokens drawn (seed 0) from the valid split, the same batches for every
data-driven method and for optipfair's hybrid.
One-shot statistics are gathered once on the unpruned model and reused across ratios.

Command (about an hour on a 2-core CPU before every row also scored the code, about 45 s more a row; results are
cached in bench/results/ and a rerun resumes):
    python bench/prune_scorers.py
optipfair is optional (`pip install --no-deps optipfair==0.4.2`); without it its rows are skipped.

    python bench/prune_scorers.py --only activation+refit "activation+refit (default recipe)" \
        "optipfair hybrid (64x512 calib)" "optipfair hybrid (64x512 calib, default recipe precision)"
measures only the named methods, all in one fresh run (so their costs are comparable side by side), and writes
them to a section of their own (`prune_scorers_only`, or `--section NAME`), leaving the full table as it is;
`--ratios 0.4` limits such a run to the ratios named, `--seed 1` draws its calibration windows with another seed.
`--zero-shot 100` also scores every row on the zero-shot suite (ARC-e, ARC-c, PIQA, WinoGrande, BoolQ, OpenBookQA,
LAMBADA; the first 100 items of each, about 2 min a row on a 2-core CPU) and gives its average beside the two
perplexities.

`(default recipe)` is the default job's pruning step as it runs there: `Pruner` (activation + refit, one-shot)
with its calibration pass in the trainer's precision (bf16 autocast on a CPU with bfloat16 instructions, float32
elsewhere); the optipfair row of the same name runs its hybrid under that precision too.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from dataclasses import replace
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.domains import add_zeroshot_flags, perplexity_by_domain, protocol_evaluator, zeroshot_evaluator  # noqa: E402
from bench.markdown import machine, write_section, zeroshot_cells  # noqa: E402
from bench.peer import optipfair_installed, optipfair_prune  # noqa: E402
from prune_recover.evaluation.tasks import ZEROSHOT_TASKS  # noqa: E402
from prune_recover.jobs.configs import cpu_precision, eval_precision  # noqa: E402
from prune_recover.lm import count_parameters, forward_precision  # noqa: E402
from prune_recover.models import load_model  # noqa: E402
from prune_recover.pruning.calibration import collect_activation_stats  # noqa: E402
from prune_recover.pruning.gradients import collect_taylor_stats  # noqa: E402
from prune_recover.pruning.importance import OBS_ROUND, SCORERS  # noqa: E402
from prune_recover.pruning.obs import obs_select  # noqa: E402
from prune_recover.pruning.pruner import Pruner  # noqa: E402
from prune_recover.pruning.targets import ParamModel, WidthTarget  # noqa: E402
from prune_recover.pruning.width import prune_width  # noqa: E402
from prune_recover.training.datamodule import CausalLMDataModule  # noqa: E402

RATIOS = (0.2, 0.4, 0.6)
# (importance, calibration_mode) rows pruned layer by layer, each with its own calibration passes
LAYER_BY_LAYER = (("activation", "sequential"), ("activation", "carried"), ("obs", "sequential"), ("obs", "carried"))
# `importance=obs` choosing on the Gram shrunk toward its diagonal (`pruning.obs_shrink`), one-shot
OBS_SHRINK = 1.0
OBS_SHRINK_METHOD = f"obs+refit (shrink {OBS_SHRINK:g})"
# The default recipe's calibration precision on this machine (configs/trainer/cpu.yaml): bfloat16 or float32.
RECIPE_PRECISION = eval_precision(cpu_precision())
DEFAULT_RECIPE_METHOD = "activation+refit (default recipe)"
PEER_METHODS = (
    "optipfair MAW (= max + abs(min))",
    "optipfair hybrid (64x512 calib)",
    "optipfair hybrid (64x512 calib, default recipe precision)",
)
RESULTS = Path(__file__).resolve().parent / "results" / "prune_scorers.json"
COMMAND = "python bench/prune_scorers.py"
ONLY_SECTION = "prune_scorers_only"
ZEROSHOT_NOTE = (
    " / the zero-shot suite's average (the headline metric of ARC-e, ARC-c, PIQA, WinoGrande, BoolQ, OpenBookQA "
    "and LAMBADA on their first {items} items each, as in the general-quality table; its standard error is about "
    "0.02 at 100 items)"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wikitext-dir", default="../shared/data/wikitext-2-raw")
    parser.add_argument("--fresh", action="store_true", help="ignore cached results")
    parser.add_argument("--only", nargs="+", metavar="METHOD", help="measure only these rows, in one fresh run")
    parser.add_argument("--ratios", nargs="+", type=float, default=list(RATIOS), help="with --only: these ratios")
    parser.add_argument("--section", default=ONLY_SECTION, help="with --only: the docs/BENCHMARKS.md section")
    parser.add_argument("--seed", type=int, default=0, help="with --only: the calibration draw's seed")
    add_zeroshot_flags(parser)
    args = parser.parse_args()
    unknown = [name for name in args.only or [] if name not in method_names()]
    if unknown:
        raise SystemExit(f"--only: no rows named {unknown}; the rows are {method_names()}")
    if args.only is None and (args.ratios != list(RATIOS) or args.section != ONLY_SECTION or args.seed != 0):
        raise SystemExit(
            f"--ratios, --section and --seed need --only (the full table has the ratios {list(RATIOS)}, seed 0)"
        )
    zeroshot = zeroshot_evaluator(args)  # before the model loads
    results_file = RESULTS if args.only is None else RESULTS.with_name("prune_scorers_only.json")
    fresh = args.fresh or args.only is not None or not results_file.exists()
    results = {} if fresh else json.loads(results_file.read_text())
    if args.only is not None:
        results["only"], results["ratios"], results["section"] = args.only, args.ratios, args.section
        results["seed"] = args.seed
    results["zero_shot"] = args.zero_shot
    load_before = round(os.getloadavg()[0], 2)

    def record(key: str, compute) -> None:
        assert key == "unpruned" or key.rsplit("@", 1)[0] in method_names(), f"{key} is missing from method_names()"
        unasked = args.only is not None and key != "unpruned" and key.rsplit("@", 1)[0] not in args.only
        cached = results.get(key, {})
        # an entry cached before the code column (or without the zero-shot suite, when asked) is measured again
        if ("code_ppl" in cached and (zeroshot is None or cached.get("zero_shot_items") == args.zero_shot)) or unasked:
            return
        results[key] = compute()
        print(key, results[key], flush=True)
        results_file.parent.mkdir(exist_ok=True)
        results_file.write_text(json.dumps(results, indent=1))

    base, tokenizer = load_model("smollm2-135m")
    if zeroshot is not None:
        zeroshot.tokenizer = tokenizer
    calibration = {"split": "valid", "num_samples": 64, "seq_len": 512, "batch_size": 4, "seed": args.seed}
    data = CausalLMDataModule(tokenizer, wikitext_dir=args.wikitext_dir, calibration=calibration)
    evaluator = protocol_evaluator(tokenizer, args.wikitext_dir)
    batches = data.calibration_batches()
    params = ParamModel.from_config(base.config)

    def measure(model, seconds: float) -> dict:
        ppl = perplexity_by_domain(evaluator, model)
        entry = {
            "ppl": ppl["wikitext2"],
            "code_ppl": ppl["code"],
            "params": count_parameters(model),
            "prune_seconds": round(seconds, 2),
        }
        if zeroshot is not None:
            entry["zeroshot"], entry["zero_shot_items"] = zeroshot(model), args.zero_shot
        return entry

    record("unpruned", lambda: measure(base, 0.0))
    stats, stats_seconds = None, {}

    def statistics(gradients: bool):
        """One activation pass (and one gradient pass if asked), gathered on the first run that needs them."""
        nonlocal stats
        if stats is None:
            start = time.perf_counter()
            stats = collect_activation_stats(base, batches, gram=True)
            stats_seconds["activations"] = time.perf_counter() - start
        if gradients and "gradients" not in stats_seconds:
            start = time.perf_counter()
            for index, saliency in collect_taylor_stats(base, batches).items():
                stats[index].taylor = saliency
            stats_seconds["gradients"] = time.perf_counter() - start
        return stats

    for ratio in args.ratios:
        width = WidthTarget(ratio=ratio).width(params)
        for name, scorer in SCORERS.items():
            for refit in (True,) if scorer.select else (False, True):  # a joint selector always refits

                def run(scorer=scorer, refit=refit, width=width):
                    if refit or scorer.data_driven:
                        statistics(gradients=scorer.needs == "gradients")
                    model = copy.deepcopy(base)
                    start = time.perf_counter()
                    prune_width(model, width, scorer, stats, 1e-4 if refit else None)
                    seconds = time.perf_counter() - start
                    if refit or scorer.data_driven:
                        seconds += stats_seconds["gradients" if scorer.needs == "gradients" else "activations"]
                    return measure(model, seconds)

                record(f"{name}{'+refit' if refit else ''}@{ratio}", run)

        def obs_shrunk(width=width):
            statistics(gradients=False)
            model = copy.deepcopy(base)
            select = partial(obs_select, round_size=OBS_ROUND, shrink=OBS_SHRINK)
            start = time.perf_counter()
            prune_width(model, width, replace(SCORERS["obs"], select=select), stats, 1e-4)
            return measure(model, time.perf_counter() - start + stats_seconds["activations"])

        record(f"{OBS_SHRINK_METHOD}@{ratio}", obs_shrunk)

        for importance, mode in LAYER_BY_LAYER:

            def layer_by_layer(ratio=ratio, importance=importance, mode=mode):
                model = copy.deepcopy(base)
                start = time.perf_counter()
                Pruner(importance, ratio=ratio, calibration_mode=mode).prune(model, batches)
                return measure(model, time.perf_counter() - start)

            record(f"{importance}+refit ({mode})@{ratio}", layer_by_layer)

        def default_recipe(ratio=ratio):
            model = copy.deepcopy(base)
            start = time.perf_counter()
            with forward_precision(RECIPE_PRECISION, model.device):
                Pruner("activation", ratio=ratio).prune(model, batches)
            return measure(model, time.perf_counter() - start)

        record(f"{DEFAULT_RECIPE_METHOD}@{ratio}", default_recipe)
        for key, compute in optipfair_runs(base, batches, ratio, measure).items():
            record(key, compute)

    results["load_before"], results["load_after"] = load_before, round(os.getloadavg()[0], 2)
    results_file.write_text(json.dumps(results, indent=1))  # with the load figures the section shows
    section = "prune_scorers" if args.only is None else args.section
    write_section(section, markdown(results))
    print(f"wrote docs/BENCHMARKS.md section '{section}' from {results_file}")


def optipfair_runs(base, batches, ratio: float, measure) -> dict:
    if not optipfair_installed():
        return {}

    def run(batches, precision: str = "float32"):
        model = copy.deepcopy(base)
        start = time.perf_counter()
        optipfair_prune(model, ratio, batches, precision)
        return measure(model, time.perf_counter() - start)

    static, hybrid, hybrid_recipe = PEER_METHODS
    return {
        f"{static}@{ratio}": lambda: run(None),
        f"{hybrid}@{ratio}": lambda: run(batches),
        f"{hybrid_recipe}@{ratio}": lambda: run(batches, RECIPE_PRECISION),
    }


def method_names() -> list[str]:
    """Every row of the table by name (what `--only` accepts): each scorer with and without the refit (a joint
    selector only with it), obs on the shrunk Gram, the layer-by-layer rows, the default recipe's step and optipfair's
    rows."""
    names = []
    for name, scorer in SCORERS.items():
        names += [f"{name}+refit"] if scorer.select else [name, f"{name}+refit"]
    names += [OBS_SHRINK_METHOD] + [f"{importance}+refit ({mode})" for importance, mode in LAYER_BY_LAYER]
    return [*names, DEFAULT_RECIPE_METHOD, *PEER_METHODS]


def markdown(results: dict) -> str:
    methods = sorted({key.rsplit("@", 1)[0] for key in results if "@" in key}, key=_method_order)
    only, ratios = results.get("only"), results.get("ratios", RATIOS)
    command = COMMAND if only is None else f"{COMMAND} --only " + " ".join(f'"{m}"' for m in only)
    if list(ratios) != list(RATIOS):
        command += " --ratios " + " ".join(map(str, ratios))
    if results.get("section", ONLY_SECTION) != ONLY_SECTION:
        command += f" --section {results['section']}"
    if results.get("seed", 0) != 0:
        command += f" --seed {results['seed']}"
    items = results.get("zero_shot")
    if items is not None:
        command += f" --zero-shot {items}"
    lines = [
        "## Importance scorers on SmolLM2-135M (one-shot MLP width pruning, no recovery)"
        + ("" if only is None else ": selected rows, measured side by side in one run"),
        "",
        f"Command: `{command}` (optipfair 0.4.2 installed with `pip install --no-deps optipfair==0.4.2`).",
        f"Measured on {machine()}; load average (1 min) {results.get('load_before', 'n/a')} before the run, "
        f"{results.get('load_after', 'n/a')} after it.",
        "",
        "WikiText-2 **test** perplexity / perplexity on held-out Python code (configs/eval/wikitext2_code.yaml, "
        "the general-quality table's code column), seq_len 1024, each text read as one string and tokenized once, "
        "first 16 non-overlapping windows. Calibration for every data-driven row (ours and optipfair's hybrid): "
        f"64 windows x 512 tokens from `wiki.valid.raw` (seed {results.get('seed', 0)}). `+refit` = least-squares "
        "refit of the kept `down_proj` columns on the same calibration activations (ridge 1e-4). Columns give the "
        f"two perplexities{ZEROSHOT_NOTE.format(items=items) if items is not None else ''} and, "
        "in brackets, the pruning cost in seconds including the statistics pass (one pass serves all one-shot "
        "rows here; each row's cost counts it in full). `(sequential)` / `(carried)` rows calibrate layer by layer "
        "on the already-pruned prefix (`pruning.calibration_mode`), `carried` refitting every layer to the unpruned "
        "model's output. `(default recipe)` rows calibrate in the default job's precision "
        f"({RECIPE_PRECISION} on this machine: configs/trainer/cpu.yaml). optipfair keeps "
        "`1536 - int(ratio * 1536)` neurons (615 at 60%, we keep 614), hence "
        "slightly more parameters in its 60% row.",
        "",
        f"Unpruned: ppl **{results['unpruned']['ppl']:.2f}** / code **{results['unpruned']['code_ppl']:.2f}**"
        + (f" / zero-shot **{results['unpruned']['zeroshot']['average']:.3f}**" if items is not None else "")
        + f", {results['unpruned']['params']:,} parameters.",
        "",
        "| method | " + " | ".join(f"{int(r * 100)}% pruned" for r in ratios) + " |",
        "| --- | " + " | ".join("---" for _ in ratios) + " |",
    ]
    for method in methods:
        cells = []
        for ratio in ratios:
            entry = results.get(f"{method}@{ratio}")
            if entry is None:
                cells.append("n/a")
                continue
            code = f"{entry['code_ppl']:.2f}" if "code_ppl" in entry else "n/a"  # a row cached before the column
            average = f" / {entry['zeroshot']['average']:.3f}" if items is not None else ""
            cells.append(f"{entry['ppl']:.2f} / {code}{average} ({entry['prune_seconds']:.1f} s)")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    params = {r: next((results[f"{m}@{r}"]["params"] for m in methods if f"{m}@{r}" in results), None) for r in ratios}
    lines += ["", "Parameters after pruning: " + ", ".join(f"{int(r * 100)}%: {p:,}" for r, p in params.items() if p)]
    if items is not None:
        lines += ["", *zeroshot_table(results, methods, ratios)]
    return "\n".join(lines)


def zeroshot_table(results: dict, methods: list[str], ratios) -> list[str]:
    """Every row's zero-shot tasks (headline metric ± standard error), the unpruned model first."""
    lines = [
        "| model | " + " | ".join(ZEROSHOT_TASKS) + " | average |",
        "| --- | " + " | ".join("---" for _ in range(len(ZEROSHOT_TASKS) + 1)) + " |",
    ]
    keys = ["unpruned"] + [f"{m}@{r}" for r in ratios for m in methods if f"{m}@{r}" in results]
    for key in keys:
        method, _, ratio = key.partition("@")
        name = method if not ratio else f"{method}, {int(float(ratio) * 100)}%"
        result = results[key]["zeroshot"]
        lines.append(f"| {name} | " + " | ".join(zeroshot_cells(result)) + f" | **{result['average']:.3f}** |")
    return lines


def _method_order(method: str) -> tuple:
    names = list(SCORERS)
    base = method.split("+")[0].split(" ")[0]
    return (method.startswith("optipfair"), names.index(base) if base in names else 99, method)


if __name__ == "__main__":
    main()
