import json

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from prune_recover.arch import FAMILIES, decoder_blocks, gated_mlps, unwrap
from prune_recover.lm import count_parameters
from prune_recover.models import save_pretrained_atomic
from prune_recover.pruning.depth import _identity_output
from prune_recover.pruning.surgery import prune_mlp_neurons, remove_blocks, slice_gated_mlp
from prune_recover.pruning.targets import ParamModel
from prune_recover.tiny_models import tiny_random
from tests.conftest import logits_around_a_change_in_one_autocast_region

TOKENS = torch.randint(3, 259, (2, 24), generator=torch.Generator().manual_seed(1))


def random_keep(width: int, layers: int, seed: int = 0) -> dict[int, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {i: torch.randperm(128, generator=generator)[:width].sort().values for i in range(layers)}


def zero_removed_neurons(model, keep: dict[int, torch.Tensor]) -> None:
    """Reference: a removed neuron contributes nothing once its down_proj column is zero."""
    with torch.no_grad():
        for index, mlp in enumerate(gated_mlps(model)):
            removed = torch.ones(mlp.intermediate_size, dtype=torch.bool)
            removed[keep[index]] = False
            getattr(mlp.down_proj, "base_layer", mlp.down_proj).weight[:, removed] = 0
            if hasattr(mlp.down_proj, "lora_A"):
                for adapter in mlp.down_proj.lora_A:
                    mlp.down_proj.lora_A[adapter].weight[:, removed] = 0


@pytest.mark.parametrize(
    "family, overrides",
    [(family, {}) for family in sorted(FAMILIES)] + [("granite", {"mlp_bias": True}), ("llama", {"mlp_bias": True})],
)
def test_neuron_removal_matches_zeroed_reference_and_reloads(family, overrides, tmp_path):
    model, tokenizer = tiny_random(family, **overrides)
    reference, _ = tiny_random(family, **overrides)
    keep = random_keep(50, model.config.num_hidden_layers)
    zero_removed_neurons(reference, keep)
    expected_params = ParamModel.from_config(model.config).total(50)

    assert prune_mlp_neurons(model, keep) == 50
    assert model.config.intermediate_size == 50
    assert count_parameters(model) == expected_params
    with torch.no_grad():
        torch.testing.assert_close(model(TOKENS).logits, reference(TOKENS).logits, rtol=1e-4, atol=1e-5)

    save_pretrained_atomic(model, tokenizer, tmp_path / "pruned")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "pruned")
    assert reloaded.config.intermediate_size == 50
    with torch.no_grad():
        torch.testing.assert_close(reloaded(TOKENS).logits, model(TOKENS).logits)


def test_adam_moments_and_grads_are_sliced_not_reset():
    model, _ = tiny_random("llama")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for _ in range(2):
        optimizer.zero_grad()
        model(TOKENS, labels=TOKENS).loss.backward()
        optimizer.step()
    mlp = gated_mlps(model)[1]
    gate = mlp.gate_proj.weight
    down = mlp.down_proj.weight
    before = {name: optimizer.state[p][name].clone() for p, name in [(gate, "exp_avg"), (gate, "exp_avg_sq")]}
    down_moment = optimizer.state[down]["exp_avg"].clone()
    gate_grad = gate.grad.clone()
    keep = random_keep(40, 4)

    prune_mlp_neurons(model, keep, [optimizer])

    assert any(param is gate for param in optimizer.param_groups[0]["params"])
    torch.testing.assert_close(optimizer.state[gate]["exp_avg"], before["exp_avg"][keep[1]])
    torch.testing.assert_close(optimizer.state[gate]["exp_avg_sq"], before["exp_avg_sq"][keep[1]])
    torch.testing.assert_close(optimizer.state[down]["exp_avg"], down_moment[:, keep[1]])
    torch.testing.assert_close(gate.grad, gate_grad[keep[1]])
    assert optimizer.state[gate]["step"] == 2
    optimizer.zero_grad()
    model(TOKENS, labels=TOKENS).loss.backward()
    optimizer.step()  # shapes agree after surgery


def test_adafactor_factors_are_sliced_and_training_continues():
    model, _ = tiny_random("llama")
    optimizer = torch.optim.Adafactor(model.parameters(), lr=1e-3)
    model(TOKENS, labels=TOKENS).loss.backward()
    optimizer.step()
    gate, down = gated_mlps(model)[1].gate_proj.weight, gated_mlps(model)[1].down_proj.weight
    rows, columns = optimizer.state[gate]["row_var"].clone(), optimizer.state[down]["col_var"].clone()
    keep = random_keep(40, 4)

    prune_mlp_neurons(model, keep, [optimizer])

    torch.testing.assert_close(optimizer.state[gate]["row_var"], rows[keep[1]])  # a factor over the pruned rows
    torch.testing.assert_close(optimizer.state[down]["col_var"], columns[:, keep[1]])
    optimizer.zero_grad()
    model(TOKENS, labels=TOKENS).loss.backward()
    optimizer.step()  # crashed when the factors kept their old shapes


def test_optimizer_state_of_another_layout_is_restarted_not_left_stale():
    model, _ = tiny_random("llama")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    gate = gated_mlps(model)[1].gate_proj.weight
    optimizer.state[gate] = {"step": torch.tensor(3.0), "quantized": torch.zeros(gate.numel(), dtype=torch.uint8)}

    prune_mlp_neurons(model, random_keep(40, 4), [optimizer])

    assert gate not in optimizer.state


@pytest.mark.parametrize("family", ["qwen2", "qwen3"])
def test_after_block_removal_qwens_window_layer_count_still_gives_its_layer_types(family, tmp_path):
    overrides = {"num_hidden_layers": 6, "use_sliding_window": True, "sliding_window": 8, "max_window_layers": 3}
    model, tokenizer = tiny_random(family, **overrides)
    remove_blocks(model, [1, 4])
    save_pretrained_atomic(model, tokenizer, tmp_path / "shallow")
    saved = json.loads((tmp_path / "shallow" / "config.json").read_text())
    assert saved["layer_types"] == ["full_attention"] * 2 + ["sliding_attention"] * 2
    assert saved["max_window_layers"] == 2  # was left at 3
    rebuilt = type(model.config)(**{**saved, "layer_types": None})  # what a reader of the scalar fields derives
    assert rebuilt.layer_types == saved["layer_types"]


def test_a_per_layer_config_list_of_another_length_is_refused_before_any_block_is_removed():
    model, _ = tiny_random("qwen2", num_hidden_layers=6)
    model.config.layer_types = model.config.layer_types[:5]  # one entry short: it cannot follow the removal
    with pytest.raises(ValueError, match="config.layer_types has 5 entries but the model has 6 decoder blocks"):
        remove_blocks(model, [2])
    assert len(decoder_blocks(model)) == 6 and model.config.num_hidden_layers == 6


def test_a_merged_adapter_in_the_last_layer_is_refused_before_any_layer_is_sliced():
    model, _ = tiny_random("llama")
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["gate_proj", "up_proj", "down_proj"])
    peft_model = get_peft_model(model, lora)
    gated_mlps(peft_model)[-1].down_proj.merge()  # one projection merged, as a partial merge would leave it
    before = {name: p.shape for name, p in peft_model.named_parameters()}
    with pytest.raises(RuntimeError, match="adapters are merged; unmerge first"):
        prune_mlp_neurons(peft_model, random_keep(48, 4))
    assert {name: p.shape for name, p in peft_model.named_parameters()} == before  # nothing half-sliced


@pytest.mark.parametrize("family", ["llama", "phi3"])
def test_lora_adapters_are_sliced_with_their_layers(family, tmp_path):
    model, tokenizer = tiny_random(family)
    reference, _ = tiny_random(family)
    targets = ["gate_up_proj", "down_proj"] if family == "phi3" else ["gate_proj", "up_proj", "down_proj"]
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=targets, init_lora_weights=False)
    torch.manual_seed(3)
    peft_model = get_peft_model(model, lora)
    torch.manual_seed(3)
    peft_reference = get_peft_model(reference, lora)
    keep = random_keep(48, 4, seed=5)
    zero_removed_neurons(peft_reference, keep)

    prune_mlp_neurons(peft_model, keep)

    mlp = gated_mlps(peft_model)[0]
    assert mlp.down_proj.lora_A["default"].weight.shape == (4, 48)
    expected_rows = 96 if family == "phi3" else 48
    assert mlp.gate_proj.lora_B["default"].weight.shape == (expected_rows, 4)
    with torch.no_grad():
        torch.testing.assert_close(peft_model(TOKENS).logits, peft_reference(TOKENS).logits, rtol=1e-4, atol=1e-5)
        merged_logits = peft_model(TOKENS).logits
    merged = peft_model.merge_and_unload()
    save_pretrained_atomic(merged, tokenizer, tmp_path / "merged")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    with torch.no_grad():
        torch.testing.assert_close(reloaded(TOKENS).logits, merged_logits, rtol=1e-4, atol=1e-5)


def test_bad_neuron_indices_are_rejected():
    model, _ = tiny_random("llama")
    mlp = gated_mlps(model)[0]
    for bad in (torch.tensor([0, 0, 1]), torch.tensor([5, 128]), torch.tensor([], dtype=torch.long)):
        with pytest.raises(ValueError, match="distinct and in"):
            slice_gated_mlp(mlp, bad)


@pytest.mark.parametrize("family", ["llama", "gemma2", "qwen2", "phi3"])
def test_block_removal_matches_skipped_blocks_and_generates_with_cache(family, tmp_path):
    overrides = {"num_hidden_layers": 6}
    if family == "qwen2":
        overrides.update(use_sliding_window=True, sliding_window=8, max_window_layers=2)
    model, tokenizer = tiny_random(family, **overrides)
    reference, _ = tiny_random(family, **overrides)
    layer_types = list(getattr(model.config, "layer_types", None) or [])
    handles = [decoder_blocks(reference)[i].register_forward_hook(_identity_output, with_kwargs=True) for i in (1, 4)]

    assert remove_blocks(model, [4, 1]) == [1, 4]

    assert model.config.num_hidden_layers == 4 and len(decoder_blocks(model)) == 4
    assert [block.self_attn.layer_idx for block in decoder_blocks(model)] == [0, 1, 2, 3]
    if layer_types:
        assert model.config.layer_types == [t for i, t in enumerate(layer_types) if i not in (1, 4)]
    with torch.no_grad():
        torch.testing.assert_close(model(TOKENS).logits, reference(TOKENS).logits)
    for handle in handles:
        handle.remove()

    prompt = TOKENS[:1, :10]
    cached = model.generate(prompt, max_new_tokens=12, do_sample=False, use_cache=True, pad_token_id=0)
    uncached = model.generate(prompt, max_new_tokens=12, do_sample=False, use_cache=False, pad_token_id=0)
    assert torch.equal(cached, uncached)
    save_pretrained_atomic(model, tokenizer, tmp_path / "shallow")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "shallow")
    assert torch.equal(reloaded.generate(prompt, max_new_tokens=12, do_sample=False, pad_token_id=0), cached)


def test_block_removal_drops_optimizer_state_and_params():
    model, _ = tiny_random("llama")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(TOKENS, labels=TOKENS).loss.backward()
    optimizer.step()
    gone = set(map(id, decoder_blocks(model)[2].parameters()))
    remove_blocks(model, [2], [optimizer])
    remaining = optimizer.param_groups[0]["params"]
    assert not gone & set(map(id, remaining))
    assert len(remaining) == len(list(model.parameters()))
    assert not gone & set(map(id, optimizer.state))


def test_block_removal_rejects_bad_requests():
    model, _ = tiny_random("llama")
    with pytest.raises(ValueError, match=r"in \[0, 4\)"):
        remove_blocks(model, [4])
    with pytest.raises(ValueError, match="at least one must remain"):
        remove_blocks(model, [0, 1, 2, 3])
    assert unwrap(model).config.num_hidden_layers == 4


def test_surgery_inside_an_autocast_region_takes_effect():
    """Autocast caches its bf16 copies of the weights for the whole region, keyed by the parameter; slicing keeps
    the parameter object, so without clearing that cache a forward pass after the surgery, still in the region (the
    pruning callback's calibration context), computes with the unpruned weights."""
    model, _ = tiny_random("llama")
    ids = torch.randint(0, model.config.vocab_size, (2, 16))
    keep = torch.arange(0, model.config.intermediate_size, 2)
    unpruned, inside, fresh = logits_around_a_change_in_one_autocast_region(
        model, ids, lambda: slice_gated_mlp(gated_mlps(model)[0], keep)
    )
    assert not torch.equal(unpruned, fresh)
    assert torch.equal(inside, fresh)
