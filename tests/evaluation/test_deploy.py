"""Deployment metrics: speed, memory and FLOPs of a base and a pruned model."""

import pytest
import torch

from prune_recover.evaluation import deploy, deploy_compare
from prune_recover.models import save_pretrained_atomic
from prune_recover.pruning.pruner import Pruner
from prune_recover.tiny_models import tiny_random


def test_flops_per_token_counts_matmul_weights_and_attention():
    model, _ = tiny_random("llama")  # untied: 181,184 params, embedding 259 x 64
    expected = 2 * (181184 - 259 * 64) + 4 * 4 * 100 * 4 * 16
    assert deploy.flops_per_token(model.config, 181184, context=100) == expected
    tied, _ = tiny_random("llama", tie_word_embeddings=True)
    params = sum(p.numel() for p in tied.parameters())
    assert deploy.flops_per_token(tied.config, params, context=0) == 2 * params


def test_measure_and_compare_base_with_pruned(tmp_path):
    model, tokenizer = tiny_random("llama")
    result = deploy.measure(model, prompt_lengths=(16, 32), new_tokens=4, batch_size=2, repeats=1)
    assert set(result["prompts"]) == {"16", "32"} and result["batch"]["tokens_per_s"] > 0
    assert all(p["ttft_ms"] > 0 and p["decode_tokens_per_s"] > 0 for p in result["prompts"].values())
    tensors = [*model.parameters(), *model.buffers()]  # parameters() yields a tied matrix once
    assert result["weights_mb"] == pytest.approx(sum(t.numel() * t.element_size() for t in tensors) / 2**20)
    save_pretrained_atomic(model, tokenizer, tmp_path / "base")
    Pruner(importance="maw", ratio=0.5, refit=False, depth={"num_blocks": 1}).prune(
        model, [torch.randint(3, 259, (2, 16))]
    )
    save_pretrained_atomic(model, tokenizer, tmp_path / "pruned")
    flags = ["--prompt-lengths", "16", "--new-tokens", "4", "--batch-size", "2", "--repeats", "1", "--device", "cpu"]
    # one round (each measurement is a fresh process, about 13 s of imports here); rounds are paired in `relate`,
    # tested below with three
    compared = deploy_compare.compare(str(tmp_path / "base"), str(tmp_path / "pruned"), flags, rounds=1)
    assert compared["rounds"] == 1
    assert compared["ratios"]["16"]["flop_reduction"] > 1.3
    assert compared["pruned"]["params"] < compared["base"]["params"]
    assert compared["pruned"]["weights_mb"] < compared["base"]["weights_mb"]
    assert "| 16 |" in deploy_compare.markdown(compared) and compared["base"]["peak_memory_mb"] > 0


def _run(decode: float, ttft: float, batch: float, memory: float) -> dict:
    prompt = {"ttft_ms": ttft, "decode_tokens_per_s": decode, "flops_per_token": 100.0}
    return {"prompts": {"16": prompt}, "batch": {"tokens_per_s": batch}, "peak_memory_mb": memory}


def test_speedups_are_medians_of_ratios_taken_within_a_round():
    """The machine drifts between rounds: each speed-up pairs the runs of one round, figures are per-model medians."""
    base = [_run(10, 100, 50, 1000), _run(40, 25, 200, 1010), _run(20, 50, 100, 1020)]
    pruned = [_run(13, 80, 55, 900), _run(42, 24, 200, 910), _run(21, 40, 110, 920)]
    related = deploy_compare.relate(base, pruned)
    assert related["rounds"] == 3
    assert related["ratios"]["16"]["decode_speedup"] == pytest.approx(1.05)  # ratios 1.3, 1.05, 1.05
    assert related["ratios"]["16"]["ttft_speedup"] == pytest.approx(1.25)  # 1.25, 25 / 24, 1.25
    assert related["batch_speedup"] == pytest.approx(1.1)  # 1.1, 1.0, 1.1
    assert related["base"]["prompts"]["16"]["decode_tokens_per_s"] == 20
    assert related["pruned"]["peak_memory_mb"] == 910
    with pytest.raises(ValueError):
        deploy_compare.relate(base, pruned[:2])
