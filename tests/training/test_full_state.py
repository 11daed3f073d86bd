"""Evaluation and export of a sharded model: the gathered, unsharded copy equals the model trained unsharded."""

from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from prune_recover.pruning.surgery import prune_mlp_neurons
from prune_recover.tiny_models import tiny_random
from prune_recover.training.full_state import unsharded_copy
from tests.training.two_ranks import run_two_ranks

WORKER = Path(__file__).with_name("fsdp_gather_worker.py")
TOKENS = torch.arange(2 * 24).reshape(2, 24) % 200 + 3


def tiny_pruned_model():
    """A tiny Llama pruned to width 40 (the shapes an export after pruning has), same weights every call."""
    torch.manual_seed(0)
    model, _ = tiny_random("llama")
    keep = {layer: torch.arange(0, 120, 3)[:40] for layer in range(len(model.model.layers))}
    prune_mlp_neurons(model, keep)
    return model


def one_step(model) -> None:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model(TOKENS, labels=TOKENS).loss.backward()
    optimizer.step()


def test_two_rank_fsdp_gather_exports_the_model_trained_unsharded(tmp_path):
    reference = tiny_pruned_model()
    one_step(reference)
    run_two_ranks(WORKER, str(tmp_path))

    gathered = AutoModelForCausalLM.from_pretrained(tmp_path / "gathered")
    assert gathered.config.intermediate_size == 40
    ours, expected = gathered.state_dict(), reference.state_dict()
    assert ours.keys() == expected.keys()
    different = [key for key in ours if not torch.equal(ours[key], expected[key])]
    assert not different, f"{len(different)} tensors differ from the unsharded run, e.g. {different[:3]}"


def test_a_gathered_lora_state_is_merged_like_the_model_itself():
    model = get_peft_model(tiny_pruned_model(), LoraConfig(r=4, target_modules="all-linear"))
    for name, param in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param)  # non-zero adapters, so merging changes the weights
    state = {key: value.clone() for key, value in model.state_dict().items()}

    copy = unsharded_copy(model, state)

    merged = model.merge_and_unload()
    assert copy.state_dict().keys() == merged.state_dict().keys()
    for key, value in merged.state_dict().items():
        torch.testing.assert_close(copy.state_dict()[key], value)


def test_a_teacher_sharded_over_two_ranks_holds_half_its_weights_per_rank_and_gives_the_same_logits(tmp_path):
    teacher = tiny_pruned_model().eval()
    with torch.no_grad():
        expected = teacher(TOKENS, use_cache=False).logits
    whole = sum(p.numel() * p.element_size() for p in teacher.parameters())
    run_two_ranks(Path(__file__).with_name("teacher_shard_worker.py"), str(tmp_path))
    result = torch.load(tmp_path / "teacher.pt")
    torch.testing.assert_close(result["logits"], expected, rtol=1e-5, atol=1e-5)
    assert sum(result["bytes_per_rank"]) == whole and max(result["bytes_per_rank"]) <= 0.55 * whole
