"""The model card written with every export (`final/README.md`), through huggingface_hub's `ModelCard`.

YAML front matter (`ModelCardData`): base model, `library_name: transformers`, tags, pipeline tag and
the base model's licence when known. Body, built from the run report: what was removed, how it was
chosen, how quality was recovered, perplexity per domain and zero-shot accuracy (base vs this model),
the exact command and resolved config, and the limits of those figures.
"""

from __future__ import annotations

import yaml
from huggingface_hub import ModelCard, ModelCardData

from prune_recover.evaluation.tasks import headline_metric

TAGS = ["pruned", "structured-pruning", "prune_recover"]


def model_card(report: dict, base_model: str | None = None, license: str | None = None) -> ModelCard:
    """The card of an exported model, from its run report (`pruning_report.json`)."""
    data = ModelCardData(
        base_model=base_model,
        library_name="transformers",
        license=license,
        pipeline_tag="text-generation",
        tags=TAGS + [f"recovery-{report.get('recovery', {}).get('method', 'none')}"],
    )
    sections = [
        f"# {report.get('model', 'model')}, structurally pruned",
        _removed(report),
        _recovery(report),
        _perplexity(report),
        _tasks(report),
        _reproduce(report),
        _limitations(report),
    ]
    body = "\n\n".join(section for section in sections if section)
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}\n")


def removed_blocks(num_layers: int, events: list[dict]) -> list[int]:
    """The blocks removed over all events, numbered as in the unpruned model (each event's `removed_blocks` number
    the blocks of the model it pruned, after the earlier events' removals)."""
    alive, removed = list(range(num_layers)), []
    for event in events:
        gone = set(event.get("removed_blocks", []))
        removed += [alive[index] for index in gone]
        alive = [block for index, block in enumerate(alive) if index not in gone]
    return sorted(removed)


def _event_line(event: dict, width_before: int) -> str:
    """One event: the blocks it removed and by which criterion, the width and by which importance."""
    parts = []
    if event.get("removed_blocks"):
        parts.append(f"{len(event['removed_blocks'])} block(s) removed by `{event['depth_criterion']}`")
    if event["intermediate_size"] != width_before:
        width, importance = event["intermediate_size"], event["importance"]
        parts.append(f"width {width} by importance `{importance}`, refit {event['refit']}")
    parts.append(f"{event['calibration_tokens']:,} calibration tokens")
    return f"- Step {event['step']}: {', '.join(parts)}."


def _removed(report: dict) -> str:
    base, final, events = report["base"], report["final"], report.get("events", [])
    blocks = removed_blocks(base["num_layers"], events)
    lines = [
        "## What was removed",
        "",
        f"- Parameters: {base['params']:,} -> {final['params']:,} "
        f"({1 - final['params'] / base['params']:.1%} removed).",
        f"- MLP width of every decoder block: {base['intermediate_size']} -> {final['intermediate_size']} neurons "
        "(gate/up rows and down columns physically removed; plain transformers layout).",
        f"- Decoder blocks: {base['num_layers']} -> {final['num_layers']}"
        + (f" (removed, numbered before removal: {blocks})." if blocks else " (none removed)."),
    ]
    width = base["intermediate_size"]
    for event in events:
        lines.append(_event_line(event, width))
        width = event["intermediate_size"]
    calibration = report.get("data", {}).get("train")
    if calibration:
        lines.append(f"- Calibration and training data: {_join(calibration)}.")
    return "\n".join(lines)


def _recovery(report: dict) -> str:
    recovery = report.get("recovery")
    if not recovery:
        return "## Recovery\n\nNone: the model was pruned and exported without training."
    return (
        "## Recovery\n\n"
        f"`{recovery['method']}` for {recovery['steps']} optimizer steps, {recovery['tokens_seen']:,} training tokens "
        f"({recovery.get('world_size', 1)} process(es)); distillation from the unpruned model: {recovery['distill']}."
    )


def _perplexity(report: dict) -> str:
    base, final = report["base"].get("ppl_by_domain", {}), report["final"].get("ppl_by_domain", {})
    if not final:
        return ""
    lines = ["## Perplexity", "", "| domain | window | base | this model | ratio |", "| --- | --- | --- | --- | --- |"]
    for domain, by_len in final.items():
        for seq_len, value in by_len.items():
            before = base.get(domain, {}).get(seq_len)
            ratio = f"{value / before:.2f}x" if before else "n/a"
            lines.append(f"| {domain} | {seq_len} | {_number(before)} | {value:.2f} | {ratio} |")
    protocol = report.get("protocol", {})
    windows = protocol.get("protocols", [{}])[0].get("max_windows")
    lines += [
        "",
        "Non-overlapping windows without carried context, exp(summed NLL / tokens); "
        + ("all windows" if windows is None else f"the first {windows} windows")
        + f" of each text, forward passes in {protocol.get('precision', 'float32')}. "
        + f"Test text: {protocol.get('eval_data', 'the test split')}.",
    ]
    return "\n".join(lines)


def _tasks(report: dict) -> str:
    final = report["final"].get("tasks")
    if not final:
        return ""
    base = report["base"].get("tasks", {})
    lines = [
        "## Zero-shot tasks",
        "",
        "| task | metric | base | this model | stderr | items |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for task, scores in final.items():
        metric = headline_metric(task, scores)
        before = base.get(task, {}).get(metric)
        stderr = scores.get(f"{metric}_stderr")
        lines.append(
            f"| {task} | {metric} | {_number(before, 4)} | {scores[metric]:.4f} | {_number(stderr, 4)} | "
            f"{scores['items']} |"
        )
    if report["final"].get("task_average") is not None:
        lines.append(
            f"| average | | {_number(report['base'].get('task_average'), 4)} | "
            f"{report['final']['task_average']:.4f} | | |"
        )
    limit = report.get("protocol", {}).get("task_limit")
    lines += ["", f"lm-eval zero-shot, {'every item' if limit is None else f'the first {limit} items'} of each task."]
    return "\n".join(lines)


def _reproduce(report: dict) -> str:
    config = yaml.safe_dump(report.get("config", {}), sort_keys=False)
    command = report.get("command") or "python train.py (see the resolved config)"
    return (
        "## How it was made\n\n"
        f"```bash\n{command}\n```\n\n"
        f"<details><summary>Resolved config</summary>\n\n```yaml\n{config}```\n\n</details>"
    )


def _limitations(report: dict) -> str:
    lines = [
        "## Limitations",
        "",
        "- Structured pruning removes capacity; recovery used the data named above only, so knowledge and skills "
        "outside those domains may be degraded beyond what the figures here show.",
        "- Perplexities are measured on the texts named above; other domains can behave differently.",
    ]
    limit = report.get("protocol", {}).get("task_limit")
    if limit is not None:
        lines.append(f"- Task accuracies use the first {limit} items of each task: see the stderr column.")
    if report["final"].get("tasks") is None:
        lines.append("- No zero-shot tasks were run for this export (`eval.tasks`).")
    return "\n".join(lines)


def _join(value) -> str:
    return "; ".join(f"{k}: {v}" for k, v in value.items()) if isinstance(value, dict) else str(value)


def _number(value, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"
