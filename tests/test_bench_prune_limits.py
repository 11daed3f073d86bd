"""bench/prune_limits.py: the zero-shot column beside both perplexities, and its flags refused before a model loads."""

import pytest

from bench.prune_limits import budget_markdown, parse_args
from tests.evaluation.test_tasks import ZEROSHOT_DIR

ROWS = [("64 x 512 calibration tokens, ridge 0.0001", 39.38, 40.01), ("64 x 512, ridge 0.1", 53.67, 80.72)]


def test_the_budget_table_has_a_zero_shot_column_only_when_the_suite_ran():
    unscored = [(*row, None) for row in ROWS]
    plain = budget_markdown("python bench/prune_limits.py --budget", None, (22.75, 8.07, None), unscored)
    assert "| calibration, ridge | WikiText-2 perplexity | code perplexity |\n| --- | --- | --- |\n" in plain
    assert "zero-shot" not in plain.lower()

    scores = [0.414, 0.352]
    command = "python bench/prune_limits.py --budget --zero-shot 100"
    scored = [(*row, score) for row, score in zip(ROWS, scores, strict=True)]
    with_suite = budget_markdown(command, 100, (22.75, 8.07, 0.403), scored)
    assert f"Command: `{command}`." in with_suite
    assert "| WikiText-2 perplexity | code perplexity | zero-shot average |\n| --- | --- | --- | --- |\n" in with_suite
    assert "| 64 x 512 calibration tokens, ridge 0.0001 | 39.38 | 40.01 | 0.414 |" in with_suite
    assert "| 64 x 512, ridge 0.1 | 53.67 | 80.72 | 0.352 |" in with_suite
    assert "Unpruned: **22.75** (code **8.07**, zero-shot **0.403**)." in with_suite
    assert "the first 100 items of each task" in with_suite


def test_the_flags_are_read_and_a_bad_suite_request_stops_before_any_model_loads():
    assert parse_args(["--budget"]) == (True, None, None)
    budget, evaluator, items = parse_args(["--zero-shot", "5", "--zeroshot-dir", str(ZEROSHOT_DIR)])
    assert (budget, items, evaluator.limit) == (False, 5, 5)
    with pytest.raises(SystemExit, match="--zero-shot: a positive number of items per task, got 0"):
        parse_args(["--zero-shot", "0", "--zeroshot-dir", str(ZEROSHOT_DIR)])
    with pytest.raises(SystemExit, match="--zeroshot-dir: the zero-shot suite needs .* in /nonexistent"):
        parse_args(["--zero-shot", "5", "--zeroshot-dir", "/nonexistent"])
