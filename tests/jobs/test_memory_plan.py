"""The memory plan of the 8B recipe, checked by hand against the figures in configs/recipe/medit8b_to_4b8.yaml."""

import pytest
from transformers import LlamaConfig

from prune_recover.jobs.configs import compose_train_config
from prune_recover.jobs.memory_plan import GIB, main, memory_plan

PRUNED_PARAMS = 4_809_035_776  # Llama-3.1-8B with every MLP at width 6144
BASE_PARAMS = 8_030_261_248


@pytest.fixture
def llama31_8b_config(tmp_path):
    """Llama-3.1-8B's shapes (config only, no weights: the hub is not reachable here)."""
    LlamaConfig(
        hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=False, rope_theta=500000.0,
    ).save_pretrained(tmp_path / "llama31_8b")  # fmt: skip
    return str(tmp_path / "llama31_8b")


def test_the_8b_recipe_fits_8_gpus_of_80_gib_sharded_and_not_replicated(llama31_8b_config):
    cfg = compose_train_config(["recipe=medit8b_to_4b8", f"model.name={llama31_8b_config}"])
    plan = memory_plan(cfg, gpus=8, gpu_memory_gib=80)
    rows = plan.rows
    assert rows["weights"] == PRUNED_PARAMS * 4 / 8  # float32 masters, sharded 8 ways
    assert rows["AdamW states (2)"] == 2 * rows["gradients"] == 2 * rows["weights"]
    assert rows["setup: unpruned model while pruning at step 0"] == BASE_PARAMS * 2  # loaded in bf16
    assert rows["logits and their gradient (float32)"] == 4 * 2048 * 128256 * 8
    assert plan.fits and 20 * GIB < plan.training_total < 22 * GIB

    replicated = memory_plan(
        compose_train_config(["recipe=medit8b_to_4b8", f"model.name={llama31_8b_config}", "trainer=ddp"]), 8, 80
    )
    assert replicated.rows["weights"] == PRUNED_PARAMS * 4 and not replicated.fits


def test_the_command_exits_non_zero_when_the_plan_does_not_fit(capsys):
    assert main(["--gpus", "1", "--gpu-memory", "24", "model.name=tiny-random"]) == 0
    assert main(["--gpus", "1", "--gpu-memory", "0.001"]) == 1
    assert "does NOT fit" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["--gpus", "0"])


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["model.dtype=bfloat"], "model.dtype must be one of"),  # counted as 4 bytes, and said "fits"
        (["data.batch_size=-4"], "data.batch_size takes a whole number >= 1, got -4"),  # a negative total that "fits"
        (["recovery=lora", "recovery.module.lora.r=-64"], "lora needs r a positive integer"),
        (["recovery=distill", "recovery.module.distill.alpha=5"], "distill.alpha must be in"),
        (["callbacks.master_weights.dtype=fp32"], "master_weights.dtype must be one of"),  # was a KeyError
        (["recovery=none"], "the memory plan is of a training run"),  # was a ConfigAttributeError
    ],
)
def test_settings_train_py_would_refuse_get_no_plan_and_exit_2(capsys, overrides, message):
    assert main(["--gpus", "1", "model.name=tiny-random", *overrides]) == 2
    assert message in capsys.readouterr().err


def test_a_distillation_teacher_is_sharded_like_the_weights_and_both_activation_settings_are_shown(llama31_8b_config):
    overrides = ["recipe=medit8b_to_4b8", f"model.name={llama31_8b_config}", "recovery.module.distill.alpha=1.0"]
    sharded = memory_plan(compose_train_config(overrides), gpus=8, gpu_memory_gib=80)
    replicated = memory_plan(compose_train_config([*overrides, "trainer=ddp"]), gpus=8, gpu_memory_gib=80)
    assert sharded.rows["distillation teacher (bf16)"] == BASE_PARAMS * 2 / 8
    assert replicated.rows["distillation teacher (bf16)"] == BASE_PARAMS * 2
    (shown,) = [value for name, value in sharded.rows.items() if name.startswith("activations")]
    (other,) = sharded.alternatives.values()
    assert other != shown and "For comparison" in sharded.table()
