import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Config

from prune_recover.arch import FAMILIES, UnsupportedModelError, decoder_blocks, family_of, gated_mlps, unwrap
from prune_recover.tiny_models import tiny_random


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_gated_mlp_view_reproduces_the_mlp(family):
    """The view's gate/up/down weights recompute each family's MLP output exactly."""
    model, _ = tiny_random(family)
    blocks = decoder_blocks(model)
    assert len(blocks) == model.config.num_hidden_layers
    for block, mlp in zip(blocks, gated_mlps(model), strict=True):
        assert mlp.module is block.mlp
        assert mlp.gate_weight().shape == (128, 64) and mlp.up_weight().shape == (128, 64)
        assert mlp.down_weight().shape == (64, 128)
        x = torch.randn(3, 64)
        act = block.mlp.act_fn if hasattr(block.mlp, "act_fn") else block.mlp.activation_fn
        expected = (act(x @ mlp.gate_weight().T) * (x @ mlp.up_weight().T)) @ mlp.down_weight().T
        torch.testing.assert_close(block.mlp(x), expected)
    assert mlp.fused == (family == "phi3")


def test_non_glu_model_is_rejected_naming_supported_families():
    config = GPT2Config(n_layer=2, n_embd=32, n_head=2)
    with pytest.raises(UnsupportedModelError, match=r"gpt2.*Supported families: Llama \(llama\)"):
        family_of(config)
    with pytest.raises(UnsupportedModelError, match="Phi-3"):
        gated_mlps(AutoModelForCausalLM.from_config(config))


def test_unwrap_peft_and_ddp_style_wrappers():
    from peft import LoraConfig, get_peft_model

    model, _ = tiny_random("llama")
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=["gate_proj", "down_proj"]))
    assert unwrap(peft_model) is model
    wrapper = torch.nn.Module()
    wrapper.module = peft_model
    assert unwrap(wrapper) is model
    assert len(gated_mlps(wrapper)) == 4
    with pytest.raises(TypeError, match="does not wrap"):
        unwrap(torch.nn.Linear(2, 2))
