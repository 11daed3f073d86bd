import pytest
import torch

from prune_recover.arch import decoder_blocks
from prune_recover.lm import count_parameters
from prune_recover.pruning.pruner import Pruner
from prune_recover.pruning.targets import ParamModel
from prune_recover.tiny_models import tiny_random
from tests.conftest import token_batches


@pytest.mark.parametrize("mode", ["oneshot", "layerwise", "sequential"])
@pytest.mark.parametrize("importance", ["activation", "wanda", "taylor", "maw"])
def test_prune_reaches_the_planned_shape(mode, importance):
    model, _ = tiny_random("llama", num_hidden_layers=8)
    pruner = Pruner(importance=importance, ratio=0.5, calibration_mode=mode, depth={"num_blocks": 2})
    plan = pruner.plan(model.config)
    event = pruner.prune(model, token_batches())
    assert (event.intermediate_size, event.num_layers, event.params) == (64, 6, plan.params)
    assert event.params == count_parameters(model) == ParamModel.from_config(model.config).total()
    assert len(event.removed_blocks) == 2 and event.depth_criterion == "ppl"
    assert model(token_batches(count=1)[0]).logits.isfinite().all()


def test_weight_only_without_refit_needs_no_data_and_maw_keeps_the_formula_top():
    model, _ = tiny_random("llama")
    pruner = Pruner(importance="maw", ratio=0.25, refit=False)
    assert not pruner.needs_calibration
    gate = model.model.layers[0].mlp.gate_proj.weight.detach().clone()
    up = model.model.layers[0].mlp.up_proj.weight.detach().clone()
    event = pruner.prune(model)
    expected = (gate.abs().amax(1) + up.abs().amax(1)).argsort(descending=True)[:96].sort().values
    assert torch.equal(model.model.layers[0].mlp.gate_proj.weight, gate[expected])
    assert event.calibration_tokens == 0 and event.calibration_mode is None


def test_target_params_with_depth_plan():
    model, _ = tiny_random("llama", num_hidden_layers=8)
    full = ParamModel.from_config(model.config)
    target = full.total(64, 6)
    pruner = Pruner(ratio=None, target_params=target, round_to=16, depth={"num_blocks": 2, "criterion": "angular"})
    plan = pruner.plan(model.config)
    assert (plan.intermediate_size, plan.num_layers, plan.params) == (64, 6, target)
    event = pruner.prune(model, token_batches())
    assert event.params == target and len(decoder_blocks(model)) == 6


def test_depth_only_pruning():
    model, _ = tiny_random("llama")
    pruner = Pruner(ratio=None, depth={"num_blocks": 1})
    event = pruner.prune(model, token_batches())
    assert event.num_layers == 3 and event.intermediate_size == 128 and not event.refit


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"ratio": 1.2}, r"ratio must be in \(0, 1\)"),
        ({"importance": "random"}, "Unknown importance scorer 'random'"),
        ({"ratio": None}, "nothing to prune"),
        ({"calibration_mode": "streaming"}, "calibration_mode must be one of"),
        ({"depth": {"num_blocks": -1}}, "pruning.depth.num_blocks takes a whole number >= 0, got -1"),
        ({"depth": {"num_blocks": True}}, "pruning.depth.num_blocks takes a whole number >= 0, got True"),  # was 1
        ({"depth": {"num_blocks": 1, "protect_last": True}}, r"protect_last \(or null\) takes a whole number >= 0"),
        ({"depth": {"num_blocks": 1, "criterion": "magic"}}, "Unknown depth criterion 'magic'"),
        ({"refit_damp": -1.0}, "refit_damp must be a finite non-negative number"),
        ({"refit_damp": float("nan")}, "refit_damp must be a finite non-negative number, got nan"),
        ({"refit_damp": float("inf")}, "refit_damp must be a finite non-negative number, got inf"),
    ],
)
def test_bad_settings_fail_on_construction(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Pruner(**{"ratio": 0.4, **kwargs})


def test_more_blocks_than_exist_fails_in_plan_before_any_work():
    model, _ = tiny_random("llama")
    with pytest.raises(ValueError, match="cannot remove 5 of 4 blocks .* at least one must remain"):
        Pruner(ratio=None, depth={"num_blocks": 5}).plan(model.config)
    with pytest.raises(ValueError, match="num_blocks=3 but the model has 4 blocks, 2 of them removable"):
        Pruner(ratio=None, depth={"num_blocks": 3, "protect_first": 1, "protect_last": 1}).plan(model.config)
    with pytest.raises(ValueError, match="0 of them removable with criterion 'taylor_plus'"):
        Pruner(ratio=None, depth={"num_blocks": 1, "criterion": "taylor_plus"}).plan(model.config)


def test_data_driven_pruning_without_calibration_is_a_clear_error():
    model, _ = tiny_random("llama")
    with pytest.raises(ValueError, match="needs calibration batches"):
        Pruner(ratio=0.5).prune(model, [])


def peft_dora(model):
    from peft import LoraConfig, get_peft_model

    return get_peft_model(model, LoraConfig(r=4, target_modules=["gate_proj", "up_proj", "down_proj"], use_dora=True))


@pytest.mark.parametrize(
    "settings, call, error, message",
    [
        ({"depth": {"num_blocks": 1}}, {"num_blocks": -1}, ValueError, r"integer in \[0, 3\] \(4 blocks\): -1"),
        ({"depth": {"num_blocks": 1}}, {"width": 0}, ValueError, "width must be between 1 and the current MLP width"),
        ({}, {"width": 500}, ValueError, "width must be between 1 and the current MLP width 128, got 500"),
        (
            {"calibration_mode": "carried"},
            {"stats": True},
            ValueError,
            "calibration_mode=carried runs each layer on the calibration batches",
        ),
        ({"calibration_mode": "sequential"}, {"stats": True}, ValueError, "records statistics beforehand"),
        ({"importance": "taylor"}, {"stats": True, "calibration": []}, ValueError, "taylor needs gradients"),
        ({}, {"dora": True}, NotImplementedError, "pruning a DoRA layer is not supported"),
    ],
)
def test_a_request_prune_cannot_carry_out_as_asked_is_refused_before_any_change(settings, call, error, message):
    from prune_recover.pruning.calibration import collect_activation_stats

    model, _ = tiny_random("llama")
    batches = token_batches()
    if call.pop("dora", False):
        model = peft_dora(model)
    if call.get("stats"):
        call["stats"] = collect_activation_stats(model, batches, gram=True)
    before = {name: value.clone() for name, value in model.state_dict().items()}
    with pytest.raises(error, match=message):
        Pruner(**{"ratio": 0.5, **settings}).prune(model, **{"calibration": batches, **call})
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], v) for k, v in before.items())
