"""The default job end to end (`python train.py`): perplexity on prose and code before pruning, after pruning,
after recovery, and its wall time.

Command:
    python bench/default_recipe.py [--report PATH]
It runs `python train.py output_dir=outputs/bench_default logger=csv` (the default recipe, offline) and writes
the figures of its pruning_report.json with the run's wall time. `--report` writes the section from the report
of a run already made with the default recipe (e.g. the `distill-mix` row of bench/general_quality.py, which
adds the zero-shot suite at the end) instead of running it again; the section names that run's command.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.markdown import machine, write_section  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
COMMAND = "python bench/default_recipe.py"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--report", type=Path, default=None, help="pruning_report.json of a default-recipe run")
    args = parser.parse_args()
    if args.report is None:
        out = REPO / "outputs" / "bench_default"
        start = time.perf_counter()
        subprocess.run([sys.executable, "train.py", f"output_dir={out}", "logger=csv"], cwd=REPO, check=True)
        wall, report_file = time.perf_counter() - start, out / "pruning_report.json"
    else:
        report_file = args.report
    report = json.loads(report_file.read_text())
    wall = report.get("bench_wall_seconds", wall if args.report is None else report["wall_seconds"])
    base, event, final = report["base"], report["events"][0], report["final"]
    domains = list(base["ppl_by_domain"])
    recovery, config = report["recovery"], report["config"]

    def ppl(summary, key="ppl_by_domain"):
        return " | ".join(f"{summary[key][d]['1024']:.2f}" for d in domains)

    body = "\n".join(
        [
            "## Default recipe (`python train.py` = recipe smollm2_demo), end to end",
            "",
            f"Command: `{COMMAND}{' --report ' + str(args.report) if args.report else ''}`; the run: "
            f"`{report.get('command') or 'python train.py output_dir=outputs/bench_default logger=csv'}`. "
            f"Measured on {machine()}, precision {config['trainer']['precision']}; whole run {wall / 60:.1f} min "
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
    write_section("default_recipe", body)
    print(body)


if __name__ == "__main__":
    main()
