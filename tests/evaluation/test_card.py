"""The model card and the terminal table of an evaluation: tasks whose metric is not `acc` (lm-eval's own tasks,
such as `wikitext`'s word perplexity or gsm8k's exact match under two filters) are shown, not a KeyError at export."""

from prune_recover.evaluation.card import model_card
from prune_recover.jobs.evaluate_model import format_report

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
