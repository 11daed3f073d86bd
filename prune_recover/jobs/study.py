"""Run a pruning/recovery study (one `train.py` run per arm) and collect its runs into a report.

    python -m prune_recover.study run configs/study/shortened_llama_small.yaml --out study/small
    python -m prune_recover.study report study/small [more run folders or report files] --out study/small

A study file lists `common` overrides and `arms: {name: [overrides]}`; each arm runs as
`python train.py <common> <arm> output_dir=<out>/<name>`, every arm's settings checked before the first
runs; arms whose report exists are skipped (a
rerun resumes the study: an arm cut off after a checkpoint resumes from it, one cut off before moves its
partial files aside and starts again). `report` reads every `pruning_report.json` under the given paths (but
not the runs that `overwrite=true` moved into `replaced-<time>/`) and
writes `report.md` (table: method, parameters, ppl@128, ppl@1024, perplexity on the other scored domains
such as held-out code, zero-shot average, recovery tokens, wall time) and
two PNG plots (perplexity vs parameters per method; validation perplexity over recovery steps), and
with `--wandb` logs the table and the plots to W&B.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import yaml

from prune_recover.files import write_json_atomic
from prune_recover.jobs.study_table import markdown_table, method_of, rows

REPO = Path(__file__).resolve().parents[2]


def resume_or_restart(arm_dir: Path) -> str:
    """An unfinished arm resumes from its last checkpoint (a file, or under FSDP's sharded state a folder), else
    starts again over whatever an earlier attempt left."""
    return "ckpt_path=last" if (arm_dir / "checkpoints" / "last.ckpt").exists() else "overwrite=true"


def run_study(study_file: Path, out: Path, extra: list[str]) -> list[Path]:
    """Run every arm of `study_file` (skipping finished ones) and return their report paths."""
    study = yaml.safe_load(Path(study_file).read_text())
    if not isinstance(study, dict) or not isinstance(study.get("arms"), dict) or not study["arms"]:
        raise ValueError(f"{study_file}: a study needs a non-empty mapping 'arms: {{name: [overrides]}}'")
    for name, overrides in study["arms"].items():
        check_arm(name, [*study.get("common", []), *overrides, *extra, f"output_dir={out / name}"])
    reports = []
    for name, overrides in study["arms"].items():
        report = out / name / "pruning_report.json"
        if not report.is_file():
            command = [
                sys.executable,
                str(REPO / "train.py"),
                *study.get("common", []),
                *overrides,
                *extra,
                f"output_dir={out / name}",
                f"+study_arm={name}",
                resume_or_restart(out / name),
            ]
            print("running", " ".join(command[1:]), flush=True)
            subprocess.run(command, check=True, cwd=REPO)
        reports.append(report)
    return reports


def check_arm(name: str, overrides: list[str]) -> None:
    """An arm's settings, checked from its config alone before any arm runs (a typo in the last arm would
    otherwise surface after the others had trained for most of the study)."""
    from prune_recover.jobs.configs import build, compose_train_config
    from prune_recover.jobs.preflight import check_combinations, check_recovery
    from prune_recover.models import load_config

    try:
        cfg = compose_train_config(overrides)
        pruner, model_config = build(cfg.pruning), load_config(cfg.model.name)
        build(cfg.data)
        build(cfg.callbacks.pruning, pruner=pruner)  # the schedule
        if pruner is not None:
            pruner.plan(model_config)
        check_combinations(cfg)
        check_recovery(cfg, model_config)
    except Exception as error:
        raise ValueError(f"study arm '{name}' cannot run, so no arm was started: {error}") from error


def collect(paths: list[Path]) -> list[dict]:
    """Every `pruning_report.json` at or under `paths`, with its arm name."""
    reports = []
    for path in map(Path, paths):
        found = [] if path.is_file() else path.rglob("pruning_report.json")
        # runs that overwrite=true moved aside (replaced-<time>/) are superseded, not results
        files = [path] if path.is_file() else sorted(f for f in found if not _superseded(f.relative_to(path)))
        for file in files:
            report = json.loads(file.read_text())
            report.setdefault("name", report.get("config", {}).get("study_arm") or file.parent.name)
            reports.append(report)
    if not reports:
        raise FileNotFoundError(f"no pruning_report.json under {[str(p) for p in paths]}")
    return reports


def _superseded(relative: Path) -> bool:
    return any(part.startswith("replaced-") for part in relative.parts)


def plots(reports: list[dict], table: list[dict], out: Path) -> list[Path]:
    """`ppl_vs_params.png` and `ppl_over_steps.png` in `out`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    by_params = []
    for method in sorted({r["method"] for r in table}):
        points = sorted((r["params"] / 1e6, r["ppl@128"]) for r in table if r["method"] == method and r["ppl@128"])
        if points:
            by_params.append((method, *zip(*points, strict=True)))
    by_step = [
        (
            f"{report['name']} ({method_of(report)})",
            [h["step"] for h in report["history"]],
            [h["val_ppl"] for h in report["history"]],
        )
        for report in reports
        if report.get("history")
    ]
    figures = [
        (
            "ppl_vs_params",
            by_params,
            "o",
            "parameters (M)",
            "WikiText-2 test ppl @128",
            "Perplexity vs parameters after recovery",
        ),
        ("ppl_over_steps", by_step, ".", "recovery step", "validation ppl", "Validation perplexity over recovery"),
    ]
    paths = []
    for name, curves, marker, xlabel, ylabel, title in figures:
        figure, axis = plt.subplots(figsize=(7, 4.5))
        for label, xs, ys in curves:
            axis.plot(xs, ys, marker=marker, label=label)
        axis.set(xlabel=xlabel, ylabel=ylabel, yscale="log", title=title)
        axis.grid(alpha=0.3)
        if curves:
            axis.legend(fontsize=7)
        figure.tight_layout()
        paths.append(out / f"{name}.png")
        figure.savefig(paths[-1], dpi=120)
        plt.close(figure)
    return paths


def write_report(paths: list[Path], out: Path, wandb_project: str | None = None) -> Path:
    """Collect the runs under `paths` into `out/report.md` (+ plots, + `out/report.json`)."""
    reports = collect(paths)
    table = rows(reports)
    images = plots(reports, table, out)
    tokens = sorted({r["recovery_tokens"] for r in table})
    text = "\n".join(
        [
            "# Study report",
            "",
            f"{len(table)} runs. WikiText-2 test perplexity, and that of any other scored domain, of the final "
            "model (protocol in prune_recover/evaluation/perplexity.py); zero-shot average where the run scored "
            "its tasks. "
            f"Recovery token budget per run: {', '.join(f'{t:,}' for t in tokens)}.",
            "",
            markdown_table(table),
            "",
            *(f"![{image.stem}]({image.name})" for image in images),
            "",
        ]
    )
    (out / "report.md").write_text(text)
    write_json_atomic(out / "report.json", {"rows": table})
    if wandb_project:
        log_to_wandb(table, images, wandb_project, out)
    return out / "report.md"


def log_to_wandb(table: list[dict], images: list[Path], project: str, directory: Path) -> None:
    """Log the table and the plots to a new W&B run of `project` (job type `report`), its files under `directory`."""
    import wandb

    # a run of this process (a training job's) is finished first, so this one gets its own directory and id
    run = wandb.init(
        project=project, job_type="report", name="study-report", dir=str(directory), reinit="finish_previous"
    )
    columns = list(table[0])
    run.log(
        {
            "study/table": wandb.Table(columns=columns, data=[[r[c] for c in columns] for r in table]),
            **{f"study/{image.stem}": wandb.Image(str(image)) for image in images},
        }
    )
    run.finish()


def main(argv: list[str] | None = None) -> None:
    """Command line: `run STUDY --out DIR` or `report RUNS... --out DIR`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run every arm of a study file, then write the report")
    run.add_argument("study", type=Path)
    run.add_argument("--out", type=Path, required=True)
    run.add_argument("--wandb-project", default=None, help="also log the report to this W&B project")
    run.add_argument("overrides", nargs="*", help="extra overrides for every arm")
    report = sub.add_parser("report", help="collect finished runs into a report")
    report.add_argument("runs", type=Path, nargs="+")
    report.add_argument("--out", type=Path, required=True)
    report.add_argument("--wandb-project", default=None)
    args = parser.parse_args(argv)
    paths = run_study(args.study, args.out, args.overrides) if args.command == "run" else args.runs
    print("wrote", write_report(paths, args.out, args.wandb_project))


if __name__ == "__main__":
    main()
