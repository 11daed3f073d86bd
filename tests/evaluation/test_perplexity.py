import math

import pytest
import torch

from prune_recover.data.tokens import windows
from prune_recover.evaluation.evaluator import Evaluator
from prune_recover.evaluation.perplexity import PerplexityProtocol, perplexity
from prune_recover.tiny_models import tiny_random


def test_perplexity_is_exp_of_summed_nll_over_non_overlapping_windows():
    model, _ = tiny_random("llama")
    ids = torch.randint(3, 259, (1000,), generator=torch.Generator().manual_seed(0))
    result = perplexity(model, ids, PerplexityProtocol(seq_len=128, max_windows=5))
    nll, count = 0.0, 0
    with torch.no_grad():
        for i in range(5):
            window = ids[i * 128 : (i + 1) * 128][None]
            nll += model(window, labels=window).loss.item() * 127
            count += 127
    assert result.tokens == count == 635
    assert math.isclose(result.ppl, math.exp(nll / count), rel_tol=1e-5)
    batched = perplexity(model, ids, PerplexityProtocol(seq_len=128, max_windows=5, batch_size=3))
    assert math.isclose(batched.ppl, result.ppl, rel_tol=1e-5)
    model.train()
    assert perplexity(model, ids, PerplexityProtocol(seq_len=128)).tokens == 7 * 127 and model.training


def test_with_a_bos_id_every_window_is_bos_then_the_next_seq_len_minus_one_tokens():
    model, tokenizer = tiny_random("llama")
    ids = torch.randint(3, 259, (1000,), generator=torch.Generator().manual_seed(0))
    result = perplexity(model, ids, PerplexityProtocol(seq_len=128, max_windows=3, bos=tokenizer.bos_token_id))
    nll = 0.0
    with torch.no_grad():
        for i in range(3):
            window = torch.cat([torch.tensor([tokenizer.bos_token_id]), ids[i * 127 : (i + 1) * 127]])[None]
            nll += model(window, labels=window).loss.item() * 127  # every text token predicted, the first from BOS
    assert result.tokens == 3 * 127
    assert math.isclose(result.ppl, math.exp(nll / result.tokens), rel_tol=1e-5)
    assert PerplexityProtocol(seq_len=128, bos=1).window_count(ids) == 7  # 1000 // 127
    assert result.ppl != perplexity(model, ids, PerplexityProtocol(seq_len=128, max_windows=3)).ppl


def test_evaluator_reports_every_length_and_rejects_too_short_text():
    model, _ = tiny_random("llama")
    ids = torch.randint(3, 259, (600,))
    other = torch.randint(3, 259, (300,))
    evaluator = Evaluator({"test": ids, "other": other}, seq_lens=[128, 256], max_windows=2)
    result = evaluator(model)
    assert list(result) == [128, 256] and evaluator.headline == "test"
    by_domain = evaluator.perplexities(model)
    assert list(by_domain) == ["test", "other"] and by_domain["test"] == result
    assert by_domain["other"][128] == perplexity(model, other, PerplexityProtocol(128, 2)).ppl
    summary = evaluator.summary(model)
    assert summary["ppl"] == result[128] and summary["ppl_by_domain"]["other"]["256"] == by_domain["other"][256]
    with pytest.raises(ValueError, match="'test' has 600 tokens, fewer than one window of 1024"):
        Evaluator({"test": ids}, seq_lens=[1024])


def test_windows_in_order_or_seeded_and_errors():
    ids = torch.arange(100)
    assert windows(ids, 10, 3).tolist()[1] == list(range(10, 20))
    drawn = windows(ids, 10, 4, seed=1)
    assert torch.equal(drawn, windows(ids, 10, 4, seed=1)) and (drawn[:, 0] % 10 == 0).all()
    with pytest.raises(ValueError, match=r"asked for 11 windows of 10 tokens but the text \(\d+ tokens\) holds 10"):
        windows(ids, 10, 11)


def test_precision_autocasts_every_forward_of_the_evaluator_and_is_checked():
    model, _ = tiny_random("llama")
    ids = torch.randint(3, 259, (600,), generator=torch.Generator().manual_seed(0))
    full = perplexity(model, ids, PerplexityProtocol(128, 4)).ppl
    half = perplexity(model, ids, PerplexityProtocol(128, 4, precision="bfloat16")).ppl
    assert half != full and math.isclose(half, full, rel_tol=0.02)  # bf16 products: close, not identical

    def tasks(_model):  # records whether the task forwards would run under autocast
        return {"tasks": {"probe": {"autocast": torch.is_autocast_enabled("cpu")}}, "average": 0.0}

    for precision, autocast in [("float32", False), ("bfloat16", True)]:
        evaluator = Evaluator({"test": ids}, seq_lens=[128], max_windows=4, tasks=tasks, precision=precision)
        summary = evaluator.summary(model)
        assert summary["tasks"]["probe"]["autocast"] is autocast
        assert summary["ppl"] == (half if autocast else full) and evaluator.describe()["precision"] == precision
        with torch.autocast("cpu", dtype=torch.bfloat16):  # a caller's autocast does not leak into float32
            assert evaluator.summary(model)["ppl"] == summary["ppl"]
    with pytest.raises(ValueError, match=r"precision 'fp8' is not supported; choose one of \['bfloat16', 'float16'"):
        PerplexityProtocol(precision="fp8")
