"""The scorer bench's row names: a misspelt `--only` row stops the run before the model loads (it used to be
skipped in silence, leaving a section without the row that was asked for); its zero-shot option."""

import sys

import pytest

from bench import prune_scorers
from prune_recover.evaluation.tasks import ZEROSHOT_TASKS, build_task_evaluator
from prune_recover.tiny_models import tiny_random
from tests.evaluation.test_tasks import ZEROSHOT_DIR


def test_an_unknown_only_row_stops_before_the_model_loads_and_lists_the_rows(monkeypatch):
    monkeypatch.setattr(prune_scorers, "load_model", lambda *a: pytest.fail("the model was loaded"))
    monkeypatch.setattr(sys, "argv", ["prune_scorers.py", "--only", "activation+refit", "obs", "--ratios", "0.4"])
    with pytest.raises(SystemExit, match=r"no rows named \['obs'\]; the rows are \[.*'obs\+refit'"):
        prune_scorers.main()


def test_every_scorer_has_its_rows():
    names = prune_scorers.method_names()
    for name, scorer in prune_scorers.SCORERS.items():
        assert f"{name}+refit" in names and (scorer.select or name in names)
    assert "obs+refit (shrink 1)" in names
    assert len(names) == len(set(names))


@pytest.mark.parametrize(
    "args, message",
    [
        (["--zero-shot", "0"], r"--zero-shot: a positive number of items per task, got 0"),
        (["--zero-shot", "5", "--zeroshot-dir", "/nonexistent"], r"--zeroshot-dir: the zero-shot suite needs \["),
    ],
)
def test_a_bad_zero_shot_setting_stops_before_the_model_loads(monkeypatch, args, message):
    monkeypatch.setattr(prune_scorers, "load_model", lambda *a: pytest.fail("the model was loaded"))
    monkeypatch.setattr(sys, "argv", ["prune_scorers.py", "--only", "activation+refit", *args])
    with pytest.raises(SystemExit, match=message):
        prune_scorers.main()


def test_a_zero_shot_run_gives_each_row_the_suites_average_and_its_tasks():
    model, tokenizer = tiny_random("llama")
    suite = build_task_evaluator(tokenizer, ["zeroshot"], ZEROSHOT_DIR, limit=2)
    entry = {"ppl": 39.377, "code_ppl": 40.015, "params": 1000, "prune_seconds": 62.8, "zeroshot": suite(model)}
    results = {
        "unpruned": {**entry, "ppl": 22.75, "code_ppl": 8.07},
        "activation+refit@0.4": entry,
        **{"only": ["activation+refit"], "ratios": [0.4], "section": "prune_scorers_zs", "zero_shot": 2},
    }

    text = prune_scorers.markdown(results)

    average = f"{entry['zeroshot']['average']:.3f}"
    assert '--only "activation+refit" --ratios 0.4 --section prune_scorers_zs --zero-shot 2`' in text
    assert "on their first 2 items each" in text and f"code **8.07** / zero-shot **{average}**" in text
    assert f"| activation+refit | 39.38 / 40.02 / {average} (62.8 s) |" in text
    task_row = next(line for line in text.splitlines() if line.startswith("| activation+refit, 40% |"))
    assert task_row.count("±") == len(ZEROSHOT_TASKS) and task_row.endswith(f"| **{average}** |")


def test_a_run_without_zero_shot_keeps_the_two_perplexities_only():
    entry = {"ppl": 39.377, "code_ppl": 40.015, "params": 1000, "prune_seconds": 62.8}
    results = {"unpruned": {**entry, "ppl": 22.75, "code_ppl": 8.07}, "activation+refit@0.4": entry, "ratios": [0.4]}
    text = prune_scorers.markdown(results)
    assert "| activation+refit | 39.38 / 40.02 (62.8 s) |" in text and "zero-shot" not in text
