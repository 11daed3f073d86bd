import copy
import math

import pytest
import torch

from prune_recover.arch import decoder_blocks
from prune_recover.pruning.depth import (
    angular_scores,
    calibration_perplexity,
    choose_blocks,
    get_depth_criterion,
    ppl_scores,
    taylor_scores,
)
from prune_recover.pruning.surgery import remove_blocks
from prune_recover.tiny_models import tiny_random
from tests.conftest import token_batches


def test_ppl_criterion_equals_perplexity_of_the_model_without_that_block():
    model, _ = tiny_random("llama")
    batches = token_batches(count=2)
    scores = ppl_scores(model, batches)
    for index in range(4):
        shallow = copy.deepcopy(model)
        remove_blocks(shallow, [index])
        assert math.isclose(scores[index].item(), calibration_perplexity(shallow, batches), rel_tol=1e-5)


def test_taylor_scores_sum_block_saliency():
    model, _ = tiny_random("llama")
    batches = token_batches(count=2)
    scores = taylor_scores(model, batches)
    assert all(p.grad is None and p.requires_grad for p in model.parameters())
    block = decoder_blocks(model)[3]
    expected = 0.0
    for batch in batches:
        model.zero_grad()
        model(batch, labels=batch).loss.backward()
        expected += sum((p.grad * p).abs().sum().item() for p in block.parameters())
    assert math.isclose(scores[3].item(), expected, rel_tol=1e-5)


def test_angular_distance_is_zero_for_identity_blocks_and_bounded():
    model, _ = tiny_random("llama")
    with torch.no_grad():
        block = decoder_blocks(model)[1]
        block.self_attn.o_proj.weight.zero_()
        block.mlp.down_proj.weight.zero_()
    scores = angular_scores(model, token_batches(count=2))
    assert scores[1] < 1e-3
    assert ((scores >= 0) & (scores <= 1)).all()
    assert choose_blocks(scores, 1) == [1]


def test_taylor_plus_protects_first_four_and_last_two():
    criterion = get_depth_criterion("taylor_plus")
    assert (criterion.protect_first, criterion.protect_last) == (4, 2)
    scores = torch.tensor([0.0, 0.1, 0.2, 0.3, 5.0, 4.0, 6.0, 0.0, 0.0])
    assert choose_blocks(scores, 2, 4, 2) == [4, 5]
    assert choose_blocks(scores, 2) == [0, 7]


def test_more_blocks_than_removable_is_a_clear_error():
    with pytest.raises(ValueError, match=r"cannot remove 4 blocks: the model has 8 and 2 are removable"):
        choose_blocks(torch.zeros(8), 4, 4, 2)
    with pytest.raises(ValueError, match="Unknown depth criterion 'random'"):
        get_depth_criterion("random")


def test_a_negative_number_of_blocks_is_refused():
    with pytest.raises(ValueError, match="cannot remove -1 blocks"):
        choose_blocks(torch.arange(8.0), -1)


def test_a_perplexity_past_float_range_is_inf_not_an_overflow_error():
    model, _ = tiny_random("llama")
    with torch.no_grad():
        model.lm_head.weight.mul_(1e4)  # logits so confident and wrong that the mean NLL passes 709
    batches = token_batches(2, 16)
    assert calibration_perplexity(model, batches) == math.inf
