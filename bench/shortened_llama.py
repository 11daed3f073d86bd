"""The scaled-down Shortened-LLaMA comparison on SmolLM2-135M, written into docs/BENCHMARKS.md.

Command:
    python bench/shortened_llama.py
It runs `python -m prune_recover.study run configs/study/shortened_llama_small.yaml --out
study/shortened_llama_small` (arms already finished there are not run again; about 10 minutes per
arm on 2 CPU cores), writes the study's report.md and plots, copies the plots to docs/study/ and
puts the table in the `shortened_llama` section of docs/BENCHMARKS.md.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.markdown import BENCHMARKS, machine, write_section  # noqa: E402
from prune_recover.jobs.study import REPO, collect, markdown_table, rows, run_study, write_report  # noqa: E402

STUDY = REPO / "configs" / "study" / "shortened_llama_small.yaml"
OUT = REPO / "study" / "shortened_llama_small"
COMMAND = "python bench/shortened_llama.py"


def recovery_comparison(table: list[dict]) -> list[str]:
    """One line per pruning level with several depth-pruned (PPL criterion) arms: ppl@128 by recovery method."""
    lines = []
    for params in sorted({r["params"] for r in table}, reverse=True):
        depth_ppl = [r for r in table if r["params"] == params and "(ppl)" in r["method"]]
        arms = {r["method"].split(" + ")[1]: r["ppl@128"] for r in depth_ppl}
        if len(arms) > 1:
            figures = ", ".join(f"{method} {ppl:.2f}" for method, ppl in sorted(arms.items(), key=lambda kv: kv[1]))
            lines.append(f"- depth (PPL), {params:,} parameters: ppl@128 after recovery: {figures}.")
    return lines


def main() -> None:
    run_study(STUDY, OUT, [])
    write_report([OUT], OUT)
    reports = collect([OUT])
    table = rows(reports)
    images = BENCHMARKS.parent / "study"
    images.mkdir(exist_ok=True)
    for name in ("ppl_vs_params.png", "ppl_over_steps.png"):
        shutil.copy(OUT / name, images / name)
    tokens = sorted({r["recovery_tokens"] for r in table})
    base = reports[0]["base"]["ppl_by_seq_len"]
    hours = sum(r["wall_s"] or 0 for r in table) / 3600
    body = "\n".join(
        [
            "## Shortened-LLaMA comparison, scaled down to SmolLM2-135M (width vs depth; LoRA vs CPT vs CPT->LoRA)",
            "",
            f"Command: `{COMMAND}` (= `python -m prune_recover.study run {STUDY.relative_to(REPO)} "
            f"--out {OUT.relative_to(REPO)}`). Measured on {machine()}; {len(table)} arms, {hours:.2f} h in all.",
            "",
            f"Recovery budget per arm: {', '.join(f'{t:,}' for t in tokens)} tokens of wiki.valid.raw "
            "(40 steps x batch 2 x 512; the paper used billions of tokens). Paper settings otherwise: LoRA rank 8, "
            "alpha 16, dropout 0.05, lr 1e-4; CPT AdamW betas 0.9/0.95, weight decay 0.1, lr 1e-4, clip 1.0; "
            "`cpt_then_lora` spends half the steps on each. Perplexity: wiki.test.raw, first 16 windows at each "
            f"seq_len (unpruned: {base['128']:.2f} @128, {base['1024']:.2f} @1024). Width arms remove MLP neurons "
            "(activation + refit) down to the parameter count of the 8-block depth arms.",
            "",
            markdown_table(table),
            "",
            *recovery_comparison(table),
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
