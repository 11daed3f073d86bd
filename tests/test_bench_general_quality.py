"""`bench/general_quality.py`'s row runners on a tiny model: a rerun over an earlier run, and the peer's row.

The benchmark itself needs SmolLM2 and hours; this catches its row runner drifting from train.py's rules (a rerun
once failed because train.py refuses an output_dir that holds a run unless `overwrite=true`).
"""

import json
import sys

import pytest

from bench import general_quality
from prune_recover.models import load_model
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


def test_a_peer_row_prunes_on_the_rows_calibration_batches_and_scores_the_saved_model(
    wikitext_dir, tmp_path, monkeypatch
):
    pytest.importorskip("optipfair", reason="the peer row needs optipfair (pip install --no-deps optipfair==0.4.2)")
    overrides = [o for o in tiny_overrides(wikitext_dir, tmp_path) if not o.startswith("output_dir=")]
    monkeypatch.setattr(general_quality, "OUT", tmp_path)
    monkeypatch.setattr(general_quality, "EVAL", [o for o in overrides if o.startswith(("eval", "data"))])
    monkeypatch.setitem(general_quality.PEER_ROWS, "tiny-peer", ("a tiny peer row", 0.5, overrides))

    report = general_quality.run_row("tiny-peer", [], limit=2, rerun=False)

    unpruned, _ = load_model("tiny-random")
    width = unpruned.config.intermediate_size
    assert report["result"]["intermediate_size"] == width - int(0.5 * width)  # optipfair's rounding
    assert report["result"]["params"] < sum(p.numel() for p in unpruned.parameters())
    assert report["command"].startswith(f"python -m prune_recover.eval {tmp_path / 'tiny-peer' / 'model'}")
    peer = json.loads((tmp_path / "tiny-peer" / "peer.json").read_text())
    assert peer["calibration"]["batches"] == 1 and peer["calibration"]["shape"] == [4, 64]  # tiny_overrides' 4 x 64
    assert general_quality.result_of("tiny-peer", report) == report["result"]


def test_a_run_that_names_the_peer_row_without_optipfair_stops_before_any_row_runs(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "optipfair", None)  # `import optipfair` raises ImportError, as when absent
    monkeypatch.setattr(general_quality, "OUT", tmp_path)
    monkeypatch.setattr(sys, "argv", ["general_quality.py", "--only", "maw-20", "optipfair-40"])

    with pytest.raises(SystemExit, match=r"\['optipfair-40'\] need optipfair: pip install --no-deps optipfair"):
        general_quality.main()

    assert list(tmp_path.iterdir()) == []  # maw-20, named first, never started
