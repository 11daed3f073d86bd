"""Evaluate any model without training: `python -m prune_recover.eval MODEL [overrides]`.

MODEL is anything `load_model` accepts (`smollm2-135m`, a saved directory such as `outputs/run1/final`,
a `.gguf` file, a hub id in the local cache). The overrides are those of `train.py` for the `data` and
`eval` nodes, e.g. `eval.tasks=[zeroshot] eval.task_limit=100 eval=wikitext2_code`. It prints the
perplexity of every domain and the task scores, and writes them with the protocol to
`<output_dir>/eval_report.json` (the same figures a training run reports as `base` and `final`); an earlier
report there is refused unless `overwrite=true`, which moves it into `replaced-<time>/`.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from omegaconf import OmegaConf

from prune_recover.evaluation.tasks import headline_metric
from prune_recover.files import move_aside, write_json_atomic
from prune_recover.jobs.configs import build, compose_train_config, evaluator_for
from prune_recover.jobs.preflight import check_overwrite
from prune_recover.models import load_model, load_tokenizer

USAGE = "usage: python -m prune_recover.eval MODEL [key=value ...]   (e.g. eval.tasks=[zeroshot] eval.task_limit=100)"


def evaluate_model(model_name: str, overrides: list[str]) -> dict:
    """Score `model_name` with the `eval` and `data` config nodes; write and return the report."""
    cfg = compose_train_config([f"model.name={model_name}", *overrides])
    output_dir = Path(
        cfg.output_dir if any(o.startswith("output_dir=") for o in overrides) else _default_out(model_name)
    )
    target = output_dir / "eval_report.json"
    if target.exists() and not check_overwrite(cfg):
        raise FileExistsError(
            f"{target} holds an earlier evaluation; choose another output_dir, or pass overwrite=true to move it "
            "aside into replaced-<time>/"
        )
    start = time.perf_counter()
    data = build(cfg.data)  # bad data or eval settings fail here, before the model loads
    tokenizer = load_tokenizer(cfg.model.name)
    data.set_tokenizer(tokenizer)
    evaluator = evaluator_for(cfg, data, tokenizer)
    model, _ = load_model(**cfg.model)
    report = {
        "model": model_name,
        "command": " ".join(["python -m prune_recover.eval", model_name, *overrides]),
        "protocol": {**evaluator.describe(), "eval_data": data.describe_split(data.test_split)},
        "result": evaluator.summary(model),
        "config": OmegaConf.to_container(cfg.eval, resolve=True),
    }
    report["wall_seconds"] = time.perf_counter() - start
    if target.exists():  # overwrite=true: the earlier evaluation is kept, aside
        move_aside(output_dir, [target])
    write_json_atomic(target, report)
    report["path"] = str(target)
    return report


def _default_out(model_name: str) -> Path:
    stem = Path(model_name.rstrip("/")).name or "model"
    if stem == "final":  # an export: name it after its run folder
        stem = Path(model_name.rstrip("/")).parent.name
    return Path("outputs") / "eval" / f"{stem}-{time.strftime('%Y-%m-%d_%H-%M-%S')}"


def format_report(report: dict) -> str:
    """The figures of a report as a short table for a terminal."""
    result = report["result"]
    lines = [
        f"Model: {report['model']} ({result['params']:,} parameters, MLP width {result['intermediate_size']}, "
        f"{result['num_layers']} blocks)",
        "Perplexity:",
    ]
    for domain, by_len in result["ppl_by_domain"].items():
        lines += [f"  {domain:<12} @{seq_len:<5} {value:10.3f}" for seq_len, value in by_len.items()]
    if "tasks" in result:
        limit = report["protocol"]["task_limit"]
        lines += [f"Tasks ({'all items' if limit is None else f'first {limit} items per task'}):"]
        lines += [f"  {'task':<16} {'metric':<10} {'value':>7} {'stderr':>7} {'items':>6}"]
        for task, scores in result["tasks"].items():
            metric = headline_metric(task, scores)
            stderr = scores.get(f"{metric}_stderr", float("nan"))
            lines.append(f"  {task:<16} {metric:<10} {scores[metric]:7.4f} {stderr:7.4f} {scores['items']:6d}")
        if result.get("task_average") is not None:
            lines.append(f"  {'average':<16} {'':<10} {result['task_average']:7.4f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Command line: `MODEL [overrides...]`."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0].startswith("-") or "=" in argv[0]:
        raise SystemExit(USAGE)
    report = evaluate_model(argv[0], argv[1:])
    print(format_report(report))
    print(f"Wrote {report['path']}")
