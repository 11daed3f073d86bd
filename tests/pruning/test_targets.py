import pytest
from transformers import LlamaConfig

from prune_recover.lm import count_parameters
from prune_recover.pruning.targets import ParamModel, WidthTarget, round_to_multiple
from prune_recover.tiny_models import tiny_random

# meta-llama/Llama-3.1-8B (and meditsolutions/Llama-3.1-MedIT-SUN-8B) architecture
LLAMA31_8B = LlamaConfig(
    vocab_size=128256,
    hidden_size=4096,
    intermediate_size=14336,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=8,
    tie_word_embeddings=False,
)


def test_llama31_8b_to_4b8_with_round_to_128_gives_6144():
    params = ParamModel.from_config(LLAMA31_8B)
    assert params.total() == 8_030_261_248
    width = WidthTarget(target_params=4.8e9, round_to=128).width(params)
    assert width == 6144
    assert params.total(width) == 4_809_035_776


def test_param_model_matches_real_counts_with_biases_and_ties():
    for family, overrides in [("llama", {}), ("granite", {"mlp_bias": True}), ("phi3", {}), ("qwen2", {})]:
        model, _ = tiny_random(family, **overrides)
        params = ParamModel.from_config(model.config)
        assert params.total() == count_parameters(model)
        assert params.per_neuron == (3 * 64 + (2 if overrides else 0))


def test_ratio_and_expansion_ratio_round_to_nearest_multiple():
    params = ParamModel.from_config(tiny_random("llama")[0].config)  # hidden 64, intermediate 128
    assert WidthTarget(ratio=0.4).width(params) == 77  # 76.8
    assert WidthTarget(ratio=0.4, round_to=32).width(params) == 64
    assert WidthTarget(expansion_ratio=1.5, round_to=8).width(params) == 96
    assert round_to_multiple(6123.4, 128) == 6144 and round_to_multiple(3, 128) == 128


def test_target_params_accounts_for_removed_blocks():
    params = ParamModel.from_config(LLAMA31_8B)
    width = WidthTarget(target_params=4.8e9, round_to=128).width(params, num_layers=28)
    assert abs(params.total(width, 28) - 4.8e9) < 28 * 128 * params.per_neuron


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"ratio": 1.0}, r"ratio must be in \(0, 1\)"),
        ({"ratio": 0.0}, r"ratio must be in \(0, 1\)"),
        ({"ratio": -0.2}, r"ratio must be in \(0, 1\)"),
        ({}, "set exactly one"),
        ({"ratio": 0.4, "expansion_ratio": 3.0}, r"set exactly one.*\['ratio', 'expansion_ratio'\]"),
        ({"ratio": 0.4, "round_to": 0}, "round_to must be a positive integer"),
        ({"expansion_ratio": -1.0}, "expansion_ratio must be positive"),
    ],
)
def test_invalid_targets_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        WidthTarget(**kwargs)


def test_unreachable_parameter_target_states_the_smallest_count():
    params = ParamModel.from_config(LLAMA31_8B)
    smallest = params.total(128)
    with pytest.raises(ValueError, match=f"smallest reachable count with 32 blocks and round_to=128 is {smallest:,}"):
        WidthTarget(target_params=1e9, round_to=128).width(params)


def test_targets_that_remove_nothing_are_rejected():
    params = ParamModel.from_config(LLAMA31_8B)
    with pytest.raises(ValueError, match="removes no neuron"):
        WidthTarget(target_params=9e9).width(params)
    with pytest.raises(ValueError, match="removes no neuron"):
        WidthTarget(ratio=0.001, round_to=128).width(params)
