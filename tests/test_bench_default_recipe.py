"""bench/default_recipe.py reuses an earlier zero-shot report only when it scored the same model at the same item
count (it used to reuse any report in its folder: another run's export, or another `--zeroshot`, under this run's
heading)."""

import json

from bench.default_recipe import reusable
from prune_recover.evaluation.tasks import HEADLINE


def write_report(path, model: str, limit: int, tasks=tuple(HEADLINE)):
    result = {"tasks": {task: {HEADLINE[task]: 0.5} for task in tasks}}
    path.write_text(json.dumps({"model": model, "protocol": {"task_limit": limit}, "result": result}))
    return path


def test_a_zero_shot_report_is_reused_only_for_the_same_model_and_item_count(tmp_path):
    report = tmp_path / "eval_report.json"
    assert not reusable(report, "outputs/run/final", 200)  # none yet
    write_report(report, "outputs/run/final", 200)
    assert reusable(report, "outputs/run/final", 200)
    assert not reusable(report, "outputs/other/final", 200)
    assert not reusable(report, "outputs/run/final", 100)
    write_report(report, "outputs/run/final", 200, tasks=["arc_easy"])  # a report without the whole suite
    assert not reusable(report, "outputs/run/final", 200)
