"""The default job end to end (`python train.py`): perplexity before pruning, after pruning, after recovery.

Command:
    python bench/default_recipe.py
It runs `python train.py output_dir=outputs/bench_default logger=csv` (the default recipe, offline) and
writes the figures of its pruning_report.json, with the run's wall time.
"""

from __future__ import annotations

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
    out = REPO / "outputs" / "bench_default"
    start = time.perf_counter()
    subprocess.run([sys.executable, "train.py", f"output_dir={out}", "logger=csv"], cwd=REPO, check=True)
    wall = time.perf_counter() - start
    report = json.loads((out / "pruning_report.json").read_text())
    base, event, final = report["base"], report["events"][0], report["final"]
    body = "\n".join(
        [
            "## Default recipe (`python train.py` = recipe smollm2_demo), end to end",
            "",
            f"Command: `{COMMAND}` (runs `python train.py output_dir=outputs/bench_default logger=csv`). "
            f"Measured on {machine()}; whole run {wall / 60:.1f} min.",
            "",
            "SmolLM2-135M, 40% of MLP neurons removed before the first step (activation + down_proj refit, "
            f"{event['calibration_tokens']:,} calibration tokens from the training part of wiki.valid.raw), then "
            f"{report['recovery']['steps']} steps of full continued pretraining ({report['recovery']['tokens_seen']:,} "
            "tokens of wiki.valid.raw). Perplexity: wiki.test.raw, seq_len 1024, first 16 windows.",
            "",
            "| stage | parameters | test ppl | validation ppl |",
            "| --- | --- | --- | --- |",
            f"| before pruning | {base['params']:,} | {base['ppl']:.2f} | |",
            f"| after pruning (step 0) | {event['params']:,} | {event['ppl_after']:.2f} | |",
            f"| after recovery | {final['params']:,} | {final['ppl']:.2f} | {final['val_ppl']:.2f} |",
        ]
    )
    write_section("default_recipe", body)
    print(body)


if __name__ == "__main__":
    main()
