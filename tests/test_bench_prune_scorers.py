"""The scorer bench's row names: a misspelt `--only` row stops the run before the model loads (it used to be
skipped in silence, leaving a section without the row that was asked for)."""

import sys

import pytest

from bench import prune_scorers


def test_an_unknown_only_row_stops_before_the_model_loads_and_lists_the_rows(monkeypatch):
    monkeypatch.setattr(prune_scorers, "load_model", lambda *a: pytest.fail("the model was loaded"))
    monkeypatch.setattr(sys, "argv", ["prune_scorers.py", "--only", "activation+refit", "obs", "--ratios", "0.4"])
    with pytest.raises(SystemExit, match=r"no rows named \['obs'\]; the rows are \[.*'obs\+refit'"):
        prune_scorers.main()


def test_every_scorer_has_its_rows():
    names = prune_scorers.method_names()
    for name, scorer in prune_scorers.SCORERS.items():
        assert f"{name}+refit" in names and (scorer.select or name in names)
    assert len(names) == len(set(names))
