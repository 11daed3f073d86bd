"""The scaled-down Shortened-LLaMA comparison on SmolLM2-135M, written into docs/BENCHMARKS.md.

Command:
    python bench/shortened_llama.py
It runs `python -m prune_recover.study run configs/study/shortened_llama_small.yaml --out
study/shortened_llama_small` (arms already finished there are not run again; about 10 minutes per
arm on 2 CPU cores), scores the unpruned model once with the study's evaluation settings
(`python -m prune_recover.eval`: the arms score the zero-shot suite at the end only), writes the study's
report.md and plots, copies the plots to docs/study/ and puts the tables in the `shortened_llama`
section of docs/BENCHMARKS.md.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.markdown import BENCHMARKS, machine, write_section, zeroshot_cells  # noqa: E402
from prune_recover.evaluation.tasks import ZEROSHOT_TASKS  # noqa: E402
from prune_recover.jobs.study import REPO, collect, run_study, write_report  # noqa: E402
from prune_recover.jobs.study_table import markdown_table, rows  # noqa: E402

STUDY = REPO / "configs" / "study" / "shortened_llama_small.yaml"
OUT = REPO / "study" / "shortened_llama_small"
COMMAND = "python bench/shortened_llama.py"


def recovery_comparison(table: list[dict]) -> list[str]:
    """One line per pruning level with several depth-pruned (PPL criterion) arms: each recovery method's
    WikiText-2 ppl@128, held-out code ppl@1024 and zero-shot average."""
    lines = []
    for params in sorted({r["params"] for r in table}, reverse=True):
        depth_ppl = sorted(
            (r for r in table if r["params"] == params and "(ppl)" in r["method"]), key=lambda r: r["ppl@128"]
        )
        if len(depth_ppl) > 1:
            figures = "; ".join(
                f"{r['method'].split(' + ')[1]} {r['ppl@128']:.2f} / {r['code@1024']:.2f} / {r['zeroshot_average']:.3f}"
                for r in depth_ppl
            )
            lines.append(
                f"- depth (PPL), {params:,} parameters, WikiText-2 ppl@128 / code ppl@1024 / zero-shot average "
                f"after recovery: {figures}."
            )
    return lines


def unpruned_scores() -> dict:
    """The unpruned model scored once with the study's settings (`python -m prune_recover.eval`), cached."""
    report = OUT / "unpruned" / "eval_report.json"
    if not report.is_file():
        common = yaml.safe_load(STUDY.read_text())["common"]
        command = [sys.executable, "-m", "prune_recover.eval", "smollm2-135m", *common, f"output_dir={report.parent}"]
        print("running", " ".join(command[1:]), flush=True)
        subprocess.run(command, check=True, cwd=REPO)
    return json.loads(report.read_text())


def zeroshot_table(unpruned: dict, reports: list[dict], table: list[dict]) -> list[str]:
    """Each task's headline metric for the unpruned model and every arm, in the study table's order."""
    by_name = {report["name"]: report for report in reports}
    lines = [
        "| model | " + " | ".join(ZEROSHOT_TASKS) + " | average |",
        "|" + " --- |" * (len(ZEROSHOT_TASKS) + 2),
        f"| unpruned | {' | '.join(zeroshot_cells(unpruned))} | **{unpruned['task_average']:.3f}** |",
    ]
    for row in table:
        final = by_name[row["run"]]["final"]
        lines.append(f"| {row['run']} | {' | '.join(zeroshot_cells(final))} | **{final['task_average']:.3f}** |")
    return lines


def main() -> None:
    run_study(STUDY, OUT, [])
    unpruned = unpruned_scores()["result"]
    write_report([OUT], OUT)
    reports = collect([OUT])
    table = rows(reports)
    images = BENCHMARKS.parent / "study"
    images.mkdir(exist_ok=True)
    for name in ("ppl_vs_params.png", "ppl_over_steps.png"):
        shutil.copy(OUT / name, images / name)
    tokens = sorted({r["recovery_tokens"] for r in table})
    base = reports[0]["base"]["ppl_by_domain"]
    protocol = reports[0]["protocol"]
    hours = sum(r["wall_s"] or 0 for r in table) / 3600
    body = "\n".join(
        [
            "## Shortened-LLaMA comparison, scaled down to SmolLM2-135M (width vs depth; LoRA vs CPT vs CPT->LoRA)",
            "",
            f"Command: `{COMMAND}` (= `python -m prune_recover.study run {STUDY.relative_to(REPO)} "
            f"--out {OUT.relative_to(REPO)}`, and the unpruned model scored once with "
            "`python -m prune_recover.eval smollm2-135m` and the study's common overrides). "
            f"Measured on {machine()}; {len(table)} arms, {hours:.2f} h in all.",
            "",
            f"Recovery budget per arm: {', '.join(f'{t:,}' for t in tokens)} tokens of wiki.valid.raw "
            "(40 steps x batch 2 x 512; the paper used billions of tokens); width arms calibrate on the same text. "
            "Paper settings otherwise: LoRA rank 8, alpha 16, dropout 0.05, lr 1e-4; CPT AdamW betas 0.9/0.95, "
            "weight decay 0.1, lr 1e-4, clip 1.0; `cpt_then_lora` spends half the steps on each. Width arms remove "
            "MLP neurons (activation + refit) down to the parameter count of the 8-block depth arms. "
            "Perplexity: wiki.test.raw and held-out standard-library Python code (configs/eval/wikitext2_code.yaml, "
            "a domain no arm trains or calibrates on), first 16 windows at each seq_len "
            f"(unpruned: WikiText-2 {base['wikitext2']['128']:.2f} @128, {base['wikitext2']['1024']:.2f} @1024; "
            f"code {base['code']['1024']:.2f} @1024). Zero-shot: the suite's first {protocol['task_limit']} items "
            f"per task at the end of each arm (unpruned average {unpruned['task_average']:.3f}); evaluation in "
            f"{protocol['precision']}.",
            "",
            markdown_table(table),
            "",
            *recovery_comparison(table),
            "",
            "Zero-shot suite (headline metric ± standard error; acc_norm for ARC-Challenge and OpenBookQA, acc "
            "elsewhere):",
            "",
            *zeroshot_table(unpruned, reports, table),
            "",
            "![perplexity vs parameters](study/ppl_vs_params.png)",
            "",
            "![validation perplexity over recovery steps](study/ppl_over_steps.png)",
        ]
    )
    write_section("shortened_llama", body)
    print(body)


if __name__ == "__main__":
    main()
