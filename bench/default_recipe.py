"""The default job end to end (`python train.py`): perplexity on prose and code before pruning, after pruning,
after recovery, and its wall time.

Command:
    python bench/default_recipe.py [--report PATH]
It runs `python train.py output_dir=outputs/bench_default logger=csv` (the default recipe, offline) and writes
the figures of its pruning_report.json with the run's wall time. `--report` writes the section from the report
of a run already made with the default recipe (e.g. the `distill-mix` row of bench/general_quality.py, which
adds the zero-shot suite at the end) instead of running it again; the section names that run's command.
`--section NAME` writes another section than `default_recipe` (a run on another machine beside the first).
`--zeroshot N` also scores the unpruned model and the run's export on the zero-shot suite, N items per task,
with `python -m prune_recover.eval` (reports under outputs/bench_default_zeroshot/, reused when they scored the
same model at the same item count).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.markdown import machine, write_section, zeroshot_cells  # noqa: E402
from prune_recover.evaluation.tasks import HEADLINE  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
COMMAND = "python bench/default_recipe.py"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--report", type=Path, default=None, help="pruning_report.json of a default-recipe run")
    parser.add_argument("--zeroshot", type=int, default=None, metavar="N", help="zero-shot items per task")
    parser.add_argument("--section", default="default_recipe", help="the docs/BENCHMARKS.md section to write")
    args = parser.parse_args()
    if args.report is None:
        out = REPO / "outputs" / "bench_default"
        start = time.perf_counter()
        subprocess.run([sys.executable, "train.py", f"output_dir={out}", "logger=csv"], cwd=REPO, check=True)
        wall, report_file = time.perf_counter() - start, out / "pruning_report.json"
        report = json.loads(report_file.read_text())
        report["bench_wall_seconds"] = wall  # the whole command, for a later `--report` of this run
        report_file.write_text(json.dumps(report, indent=2))
    else:
        report_file = args.report
    report = json.loads(report_file.read_text())
    wall = report.get("bench_wall_seconds", report["wall_seconds"])  # the latter: without loading and base eval
    base, event, final = report["base"], report["events"][0], report["final"]
    domains = list(base["ppl_by_domain"])
    recovery, config = report["recovery"], report["config"]
    where = machine(device="cuda" if config["trainer"].get("accelerator") == "gpu" else "cpu")  # where the run trained

    def ppl(summary, key="ppl_by_domain"):
        return " | ".join(f"{summary[key][d]['1024']:.2f}" for d in domains)

    body = "\n".join(
        [
            "## Default recipe (`python train.py` = recipe smollm2_demo), end to end",
            "",
            f"Command: `{COMMAND}{' --report ' + str(args.report) if args.report else ''}"
            f"{' --zeroshot ' + str(args.zeroshot) if args.zeroshot else ''}"
            f"{' --section ' + args.section if args.section != 'default_recipe' else ''}`; the run: "
            f"`{report.get('command') or 'python train.py output_dir=outputs/bench_default logger=csv'}`. "
            f"Measured on {where}, precision {config['trainer']['precision']} (evaluation "
            f"{report['protocol'].get('precision', 'float32')}); whole run {wall / 60:.1f} min "
            "(with the zero-shot suite at the end when the run's command asks for it).",
            "",
            f"SmolLM2-135M, 40% of MLP neurons removed before the first step ({event['importance']} + down_proj refit, "
            f"{event['calibration_tokens']:,} calibration tokens from the training data), then "
            f"{recovery['steps']} steps of `{recovery['method']}` recovery ({recovery['tokens_seen']:,} training "
            f"tokens). Training data: {'; '.join(report['data']['train'].values())}. Perplexity: "
            "16 x 1024-token windows of each evaluation domain.",
            "",
            f"| stage | parameters | {' | '.join(domains)} |",
            "| --- | --- |" + " --- |" * len(domains),
            f"| before pruning | {base['params']:,} | {ppl(base)} |",
            f"| after pruning (step 0) | {event['params']:,} | {ppl(event, 'ppl_after_by_domain')} |",
            f"| after recovery | {final['params']:,} | {ppl(final)} |",
        ]
    )
    if args.zeroshot:
        body += "\n\n" + zeroshot_section(report_file.parent / "final", args.zeroshot)
    write_section(args.section, body)
    print(body)


def reusable(report_file: Path, model: str, limit: int) -> bool:
    """Whether an earlier `python -m prune_recover.eval` report scored `model` on the zero-shot suite at `limit`
    items per task (another run's export, or another item count, is scored again)."""
    if not report_file.exists():
        return False
    scored = json.loads(report_file.read_text())
    tasks = scored["result"].get("tasks") or {}
    return scored["model"] == model and scored["protocol"].get("task_limit") == limit and tasks.keys() >= set(HEADLINE)


def zeroshot_section(export: Path, limit: int) -> str:
    """The zero-shot suite at `limit` items per task for the unpruned model and `export`, side by side."""
    from prune_recover.evaluation.tasks import ZEROSHOT_TASKS

    results, precisions = {}, set()
    for name, model in (("unpruned SmolLM2-135M", "smollm2-135m"), ("the default recipe's export", str(export))):
        out = REPO / "outputs" / "bench_default_zeroshot" / ("base" if model == "smollm2-135m" else "export")
        if not reusable(out / "eval_report.json", model, limit):
            command = [sys.executable, "-m", "prune_recover.eval", model, "eval.tasks=[zeroshot]"]
            command += [f"eval.task_limit={limit}", f"output_dir={out}", "overwrite=true"]  # an unusable report moves
            subprocess.run(command, cwd=REPO, check=True)
        scored = json.loads((out / "eval_report.json").read_text())
        results[name] = scored["result"]
        precisions.add(scored["protocol"].get("precision", "float32"))
    tasks = list(ZEROSHOT_TASKS)
    lines = [
        f"Zero-shot suite, the first {limit} items of each task: `python -m prune_recover.eval MODEL "
        f"eval.tasks=[zeroshot] eval.task_limit={limit}` (headline metric ± standard error), computed in "
        f"{' and '.join(sorted(precisions))}.",
        "",
        "| model | " + " | ".join(tasks) + " | average |",
        "| --- |" + " --- |" * (len(tasks) + 1),
    ]
    for name, result in results.items():
        lines.append(f"| {name} | " + " | ".join(zeroshot_cells(result)) + f" | **{result['task_average']:.3f}** |")
    averages = [result["task_average"] for result in results.values()]
    others = [task for task in tasks if task != "boolq"]
    without = [sum(r["tasks"][t][ZEROSHOT_TASKS[t][1]] for t in others) / len(others) for r in results.values()]
    lines += [
        "",
        f"Average: {100 * (averages[1] - averages[0]):+.1f} points against the unpruned model. Without BoolQ (a "
        "yes/no task this model answers below its majority-answer rate, so any perturbation moves it by tens of "
        f"points): {without[0]:.3f} -> {without[1]:.3f}, {100 * (without[1] - without[0]):+.1f} points.",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
