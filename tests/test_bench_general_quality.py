"""`bench/general_quality.py --rerun` runs a row again over its earlier run (a tiny model, no training).

The benchmark itself needs SmolLM2 and hours; this catches its row runner drifting from train.py's rules (a rerun
once failed because train.py refuses an output_dir that holds a run unless `overwrite=true`).
"""

import json

from bench import general_quality
from tests.test_train_cli import tiny_overrides


def test_a_rerun_moves_the_earlier_run_aside_and_writes_a_new_report(wikitext_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(general_quality, "OUT", tmp_path)
    monkeypatch.setattr(general_quality, "BUDGET", [])  # the tiny run's own budget, and scoring without tasks
    monkeypatch.setattr(general_quality, "TRAIN_EVAL", ["logger=csv"])
    overrides = [o for o in tiny_overrides(wikitext_dir, tmp_path) if not o.startswith("output_dir=")]
    overrides.append("recovery=none")

    first = general_quality.run_row("tiny", overrides, limit=2, rerun=False)
    again = general_quality.run_row("tiny", overrides, limit=2, rerun=True)

    report = json.loads((tmp_path / "tiny" / "pruning_report.json").read_text())
    assert report["bench_wall_seconds"] == again["bench_wall_seconds"] != first["bench_wall_seconds"]
    assert [p.name for p in (tmp_path / "tiny").glob("replaced-*/pruning_report.json")] == ["pruning_report.json"]
