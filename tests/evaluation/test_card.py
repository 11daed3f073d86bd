"""The model card and the terminal table of an evaluation: tasks whose metric is not `acc` (lm-eval's own tasks,
such as `wikitext`'s word perplexity or gsm8k's exact match under two filters) are shown, not a KeyError at export."""

import torch

from prune_recover.evaluation.card import model_card
from prune_recover.evaluation.report import model_summary
from prune_recover.jobs.evaluate_model import format_report
from prune_recover.pruning.pruner import Pruner
from prune_recover.tiny_models import tiny_random

SIZE = {"params": 1000, "intermediate_size": 64, "num_layers": 2}
TASKS = {
    "arc_easy": {"acc": 0.5, "acc_stderr": 0.05, "acc_norm": 0.45, "acc_norm_stderr": 0.05, "items": 100},
    "wikitext": {"word_perplexity": 31.25, "byte_perplexity": 1.8, "bits_per_byte": 0.85, "items": 62},
    "gsm8k": {
        "exact_match/strict-match": 0.02,
        "exact_match/strict-match_stderr": 0.004,
        "exact_match/flexible-extract": 0.03,
        "exact_match/flexible-extract_stderr": 0.005,
        "items": 50,
    },
}


def test_the_card_shows_tasks_without_an_acc_metric_by_their_own_first_metric():
    report = {"model": "tiny", "base": {**SIZE, "tasks": TASKS}, "final": {**SIZE, "params": 800, "tasks": TASKS}}
    card = str(model_card(report))
    assert "| arc_easy | acc | 0.5000 | 0.5000 | 0.0500 | 100 |" in card
    assert "| wikitext | word_perplexity | 31.2500 | 31.2500 | n/a | 62 |" in card
    assert "| gsm8k | exact_match/strict-match | 0.0200 | 0.0200 | 0.0040 | 50 |" in card


def test_the_terminal_table_shows_them_too():
    report = {
        "model": "tiny",
        "result": {**SIZE, "ppl_by_domain": {"test": {128: 40.0}}, "tasks": TASKS},
        "protocol": {"task_limit": 100},
    }
    table = format_report(report)
    assert "wikitext         word_perplexity 31.2500" in table and "exact_match/strict-match  0.0200" in table


def test_blocks_removed_over_several_events_are_named_as_in_the_unpruned_model():
    model, _ = tiny_random("llama", num_hidden_layers=8, seed=1)
    for index, block in enumerate(model.model.layers):
        block.original_index = index
    calibration = [torch.randint(3, 259, (2, 32), generator=torch.Generator().manual_seed(s)) for s in range(2)]
    depth = {"num_blocks": 2, "criterion": "ppl", "protect_first": 3, "protect_last": 3}
    pruner = Pruner(importance="activation", depth=depth)
    base = model_summary(model)
    events = [{**pruner.prune(model, calibration, num_blocks=1).to_dict(), "step": step} for step in (0, 10)]
    assert [event["removed_blocks"] for event in events] == [[3], [3]]  # each numbers the model it pruned
    removed = sorted(set(range(8)) - {block.original_index for block in model.model.layers})
    card = str(model_card({"model": "tiny", "base": base, "final": model_summary(model), "events": events}))
    assert f"- Decoder blocks: 8 -> 6 (removed, numbered before removal: {removed})." in card  # was [3]
    assert "- Step 10: 1 block(s) removed by `ppl`, 128 calibration tokens." in card  # no width event to name
