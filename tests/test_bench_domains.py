"""The one-shot benches score the same two texts as `python train.py eval=wikitext2_code` (the general-quality
table's WikiText-2 and code columns), so their figures can be read side by side."""

import torch

from bench.domains import evaluation_domains, protocol_evaluator
from prune_recover.jobs.configs import build, compose_train_config, evaluator_for
from prune_recover.tiny_models import byte_tokenizer


def test_the_benches_score_the_train_jobs_test_split_and_held_out_code(wikitext_dir):
    tokenizer = byte_tokenizer()
    cfg = compose_train_config(["data=wikitext2", f"data.wikitext_dir={wikitext_dir}", "eval=wikitext2_code"])
    data = build(cfg.data)
    data.set_tokenizer(tokenizer)
    expected = evaluator_for(cfg, data, tokenizer).domains

    domains = evaluation_domains(tokenizer, str(wikitext_dir))

    assert list(domains) == list(expected) == ["wikitext2", "code"]
    for name, ids in domains.items():
        assert ids.numel() > 16 * 1024 and torch.equal(ids, expected[name])
    protocol = protocol_evaluator(tokenizer, str(wikitext_dir)).describe()
    assert list(protocol["domains"]) == ["wikitext2", "code"]
    assert [(p["seq_len"], p["max_windows"]) for p in protocol["protocols"]] == [(1024, 16)]
