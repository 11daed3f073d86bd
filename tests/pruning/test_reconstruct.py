"""`pruning.reconstruct`: each pruned layer's kept weights fitted by Adam to its output target on the calibration
tokens, in float32 whatever the model's dtype, base weights only, and refused where it cannot run."""

import copy
from dataclasses import astuple
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model

from prune_recover.arch import FAMILIES, base_linear, decoder_blocks, gated_mlps
from prune_recover.pruning.importance import SCORERS
from prune_recover.pruning.layerwise import LayerwiseRunner, flat
from prune_recover.pruning.mlp_path import MlpIoRecorder, MlpPath
from prune_recover.pruning.pruner import Pruner
from prune_recover.pruning.reconstruct import ReconstructSpec, reconstruct_mlp
from prune_recover.pruning.surgery import slice_gated_mlp
from prune_recover.pruning.width import prune_width_layerwise
from prune_recover.tiny_models import tiny_random
from prune_recover.training.pruning_callback import PruningCallback
from tests.conftest import token_batches
from tests.training.two_ranks import run_two_ranks

FIT = ReconstructSpec(epochs=6, lr=3e-3, batch_tokens=128)
WORKER = Path(__file__).with_name("reconstruct_ranks_worker.py")


def halved_mlp_and_its_target(family: str, dtype: torch.dtype, lora: bool = False):
    """The first MLP of a tiny model with every other neuron sliced off, random inputs and the unpruned output."""
    model, _ = tiny_random(family)
    if lora:
        targets = ["gate_up_proj", "down_proj"] if family == "phi3" else ["gate_proj", "up_proj", "down_proj"]
        model = get_peft_model(model, LoraConfig(r=4, target_modules=targets, init_lora_weights=False))
    model = model.to(dtype)
    mlp = gated_mlps(model)[0]
    x = torch.randn(512, model.config.hidden_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        target = mlp.module(x.to(dtype)).float()
    slice_gated_mlp(mlp, torch.arange(0, mlp.intermediate_size, 2), [])
    return mlp, x, target


def float32_error(module, x, target) -> float:
    with torch.no_grad():
        return float((copy.deepcopy(module).float()(x) - target).square().sum() / target.square().sum())


@pytest.mark.parametrize("family", ["llama", "phi3"])  # phi3: the fused gate_up_proj layout
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_fit_lowers_the_error_and_keeps_dtypes_shapes_and_flags(family, dtype):
    mlp, x, target = halved_mlp_and_its_target(family, dtype)
    layout = {name: (p.shape, p.dtype, p.requires_grad) for name, p in mlp.module.named_parameters()}
    error_before = float32_error(mlp.module, x, target)
    mlp.down_proj.weight.grad = torch.ones_like(mlp.down_proj.weight)  # training's, mid accumulation window

    before, after, _ = astuple(reconstruct_mlp(mlp, mlp.module, x, target, FIT, seed=0))

    assert torch.equal(mlp.down_proj.weight.grad, torch.ones_like(mlp.down_proj.weight))
    assert all(p.grad is None for name, p in mlp.module.named_parameters() if "down_proj" not in name)

    assert before == pytest.approx(error_before, rel=1e-5)
    assert after < 0.8 * before, (before, after)
    assert {name: (p.shape, p.dtype, p.requires_grad) for name, p in mlp.module.named_parameters()} == layout
    # what it reports is the error of the weights it leaves (up to the rounding back to the model's dtype)
    assert float32_error(mlp.module, x, target) == pytest.approx(after, rel=1e-5 if dtype == torch.float32 else 0.05)


@pytest.mark.parametrize("family", ["llama", "phi3"])
def test_under_lora_only_the_base_weights_move_and_the_adapter_stays_in_the_fitted_function(family):
    mlp, x, target = halved_mlp_and_its_target(family, torch.float32, lora=True)
    adapters = {name: p.detach().clone() for name, p in mlp.module.named_parameters() if "lora_" in name}
    bases = [base_linear(module).weight.detach().clone() for module in (mlp.gate_proj, mlp.down_proj)]

    before, after, _ = astuple(reconstruct_mlp(mlp, mlp.module, x, target, FIT, seed=0))

    assert after < 0.8 * before
    for name, parameter in mlp.module.named_parameters():
        if name in adapters:
            assert torch.equal(parameter, adapters[name]) and parameter.requires_grad, name
    for module, old in zip((mlp.gate_proj, mlp.down_proj), bases, strict=True):
        assert not torch.equal(base_linear(module).weight, old)
    assert float32_error(mlp.module, x, target) == pytest.approx(after, rel=1e-5)  # the adapter's share counted


def test_a_fit_that_would_raise_the_error_is_undone():
    mlp, x, target = halved_mlp_and_its_target("llama", torch.float32)
    weights = {name: p.detach().clone() for name, p in mlp.module.named_parameters()}

    too_fast = ReconstructSpec(epochs=2, lr=10.0, batch_tokens=128)
    before, after, _ = astuple(reconstruct_mlp(mlp, mlp.module, x, target, too_fast, seed=0))

    assert after == before == pytest.approx(float32_error(mlp.module, x, target), rel=1e-6)
    assert all(torch.equal(p, weights[name]) for name, p in mlp.module.named_parameters())


def test_the_bfloat16_fit_runs_its_products_in_bfloat16_and_fits_as_well_as_float32():
    fits = {}
    for precision in ("float32", "bfloat16"):
        mlp, x, target = halved_mlp_and_its_target("llama", torch.float32)
        products: list[torch.dtype] = []
        handle = mlp.down_proj.register_forward_hook(
            lambda module, args, output, seen=products: seen.append(output.dtype)
        )
        spec = ReconstructSpec(epochs=6, lr=3e-3, batch_tokens=128, precision=precision)
        fits[precision] = reconstruct_mlp(mlp, mlp.module, x, target, spec, seed=0)
        handle.remove()
        steps = 6 * (512 // 128)
        assert products.count(torch.bfloat16) == (steps if precision == "bfloat16" else 0)
        assert all(p.dtype == torch.float32 for p in mlp.module.parameters())
        assert float32_error(mlp.module, x, target) == pytest.approx(fits[precision].after, rel=1e-5)
    float32, bfloat16 = fits["float32"], fits["bfloat16"]
    assert bfloat16.before == float32.before
    # each step sees the weights the step before left (a cast cached across steps would keep the first ones)
    assert bfloat16.after < 0.8 * bfloat16.before and bfloat16.after == pytest.approx(float32.after, rel=0.05)


def relative_errors_by_token(module, x, target) -> torch.Tensor:
    with torch.no_grad():
        return (module(x) - target).square().sum(1) / target.square().sum(1)


def test_the_normalized_loss_keeps_a_few_massive_tokens_from_taking_the_fit():
    """Four tokens whose MLP output is hundreds of times the others' (as the massive activations of SmolLM2's blocks
    2, 11 and 28): the plain loss spends the fit on them, the normalized one fits every token by its relative error."""
    model, _ = tiny_random("llama")
    mlp = gated_mlps(model)[0]
    x = torch.randn(512, model.config.hidden_size, generator=torch.Generator().manual_seed(0))
    x[:4] *= 30
    with torch.no_grad():
        target = mlp.module(x)
    slice_gated_mlp(mlp, torch.arange(0, mlp.intermediate_size, 2), [])
    ordinary = {}
    for normalized in (False, True):
        fitted = copy.deepcopy(mlp)
        spec = ReconstructSpec(epochs=6, lr=3e-3, batch_tokens=128, normalized=normalized)
        before, after, _ = astuple(reconstruct_mlp(fitted, fitted.module, x, target, spec, seed=0))
        errors = relative_errors_by_token(fitted.module, x, target)
        ordinary[normalized] = float(errors[4:].mean())
        if normalized:  # what it reports is then the mean of the tokens' relative errors
            assert after == pytest.approx(float(errors.mean()), rel=1e-4)
        assert target[:4].norm(dim=1).min() > 100 * target[4:].norm(dim=1).median()
    assert ordinary[True] < 0.75 * ordinary[False], ordinary


def final_hidden_error(model, reference, batches) -> float:
    """Relative squared error of `model`'s last hidden states against `reference`'s on `batches`."""
    with torch.no_grad():
        ours = torch.cat([model(batch, output_hidden_states=True).hidden_states[-1] for batch in batches])
        theirs = torch.cat([reference(batch, output_hidden_states=True).hidden_states[-1] for batch in batches])
    return float((ours - theirs).square().sum() / theirs.square().sum())


@pytest.mark.parametrize(
    "mode, target, normalized",
    [
        ("sequential", "carried", False),
        ("sequential", "carried", True),
        ("sequential", "local", False),
        ("carried", "carried", False),
        ("layerwise", "local", True),
    ],
)
def test_pruning_with_reconstruction_ends_closer_to_the_unpruned_model(mode, target, normalized):
    reference, _ = tiny_random("llama")
    batches = token_batches(count=4, seq_len=64)
    plain, fitted = copy.deepcopy(reference), copy.deepcopy(reference)
    plain_event = Pruner(ratio=0.5, calibration_mode=mode).prune(plain, batches)
    spec = {"epochs": 4, "lr": 2e-3, "batch_tokens": 64, "target": target, "normalized": normalized}
    event = Pruner(ratio=0.5, calibration_mode=mode, reconstruct=spec).prune(fitted, batches)

    # the first layer chooses before any fit; above it a pruned prefix (sequential, carried) now feeds fitted outputs
    same = [torch.equal(event.kept[i], plain_event.kept[i]) for i in plain_event.kept]
    assert same[0] and (all(same) if mode == "layerwise" else not all(same)), same
    assert fitted.config.intermediate_size == plain.config.intermediate_size == 64
    assert sorted(event.reconstructed) == list(range(len(event.kept)))
    assert all(after < before for before, after in event.reconstructed.values()), event.reconstructed
    report = event.to_dict()  # a pruning_report.json entry
    assert report["reconstruct_epochs"] == 4 and report["reconstruct_error"][1] < report["reconstruct_error"][0]
    assert report["reconstruct_normalized"] == normalized and report["reconstruct_precision"] == "float32"
    plain_report = plain_event.to_dict()
    assert plain_report["reconstruct_epochs"] == 0 and plain_report["reconstruct_error"] is None
    assert plain_report["reconstruct_precision"] is None
    if target == "carried":  # fitted to the unpruned model's block outputs, the model ends closer to it
        assert final_hidden_error(fitted, reference, batches) < 0.9 * final_hidden_error(plain, reference, batches)


def test_the_carried_target_makes_up_for_the_layers_below():
    """Each layer's target is the unpruned block output minus this block's residual on the pruned prefix: with
    the carried target the model's last hidden states end closer to the unpruned model's than with the local one."""
    reference, _ = tiny_random("llama")
    batches = token_batches(count=4, seq_len=64)
    errors = {}
    for target in ("local", "carried"):
        model = copy.deepcopy(reference)
        spec = {"epochs": 6, "lr": 5e-3, "batch_tokens": 64, "target": target}
        Pruner(ratio=0.5, calibration_mode="sequential", reconstruct=spec).prune(model, batches)
        errors[target] = final_hidden_error(model, reference, batches)
    assert errors["carried"] < errors["local"], errors


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"epochs": -1}, r"pruning.reconstruct.epochs takes a whole number >= 0, got -1"),
        ({"epochs": 1.5}, r"pruning.reconstruct.epochs takes a whole number >= 0, got 1.5"),
        ({"batch_tokens": 0}, r"pruning.reconstruct.batch_tokens takes a whole number >= 1, got 0"),
        ({"lr": 0}, r"pruning.reconstruct.lr must be a finite positive number, got 0"),
        ({"lr": float("nan")}, r"pruning.reconstruct.lr must be a finite positive number, got nan"),
        ({"target": "global"}, r"pruning.reconstruct.target must be one of \('local', 'carried'\), got 'global'"),
        ({"normalized": "yes"}, r"pruning.reconstruct.normalized must be true or false, got 'yes'"),
        (
            {"precision": "float16"},
            r"pruning.reconstruct.precision must be one of \('float32', 'bfloat16'\), got 'float16'",
        ),
    ],
)
def test_bad_settings_are_refused_with_what_is_allowed(settings, message):
    with pytest.raises(ValueError, match=message):
        Pruner(ratio=0.5, calibration_mode="sequential", reconstruct=settings)


def test_it_is_refused_where_there_are_no_layer_inputs_to_fit_on():
    needs = r"pruning.reconstruct .* needs width pruning and calibration_mode layerwise, sequential or carried"
    with pytest.raises(ValueError, match=needs + ", got calibration_mode=oneshot"):
        Pruner(ratio=0.5, reconstruct={"epochs": 2})
    with pytest.raises(ValueError, match=needs):
        Pruner(depth={"num_blocks": 1}, calibration_mode="sequential", reconstruct={"epochs": 2})
    pruner = Pruner(ratio=0.5, calibration_mode="layerwise", reconstruct={"epochs": 2})
    refusal = r"pruning.reconstruct runs each layer on the calibration batches .* Use stats_source=calibration"
    with pytest.raises(ValueError, match=refusal):
        PruningCallback(pruner, stats_source="training")
    model, _ = tiny_random("llama")
    stats_of_training = {}  # any statistics gathered beforehand: refused before they are read
    with pytest.raises(ValueError, match=refusal):
        pruner.prune(model, token_batches(count=1, seq_len=16), stats=stats_of_training)
    assert model.config.intermediate_size == 128
    Pruner(ratio=0.5, calibration_mode="layerwise", reconstruct={"epochs": 0})  # off: allowed anywhere
    PruningCallback(Pruner(ratio=0.5, reconstruct={"epochs": 0}), stats_source="training")


def test_two_ranks_with_different_calibration_batches_end_with_the_same_weights(tmp_path):
    """Under DDP the fitted weights go through the all-reduce mean: ranks that fitted on different tokens agree."""
    run_two_ranks(WORKER, str(tmp_path))
    digests = [(tmp_path / f"rank{rank}.txt").read_text().split() for rank in range(2)]
    assert digests[0][0] == digests[1][0]  # the weights after the reduce
    assert digests[0][1] != digests[1][1]  # what each rank would have kept without it


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_the_fitted_path_plus_the_residual_stream_is_the_blocks_output_in_every_family(family):
    """The carried target is the unpruned block output minus the residual stream: that needs the whole MLP path
    (Gemma 2/3 and OLMo-2 normalise the MLP output, Granite scales it)."""
    model, _ = tiny_random(family, **({"residual_multiplier": 0.5} if family == "granite" else {}))
    runner = LayerwiseRunner(model, token_batches(count=2, seq_len=16))
    block_output = flat(runner.run_block(1))
    with MlpIoRecorder(decoder_blocks(model)[1]) as io:
        runner.run_block(1)
    x, path_output, residual = io.tensors()
    assert torch.equal(path_output, flat([MlpPath(decoder_blocks(model)[1])(x)]))  # what the block computed
    with torch.no_grad():  # an MLP that adds nothing: the block then outputs its residual stream alone
        base_linear(gated_mlps(model)[1].down_proj).weight.zero_()
    torch.testing.assert_close(residual, flat(runner.run_block(1)))
    torch.testing.assert_close(path_output + residual, block_output)
    mlp = gated_mlps(model)[1].module
    assert not mlp._forward_hooks and not mlp._forward_pre_hooks  # the recorder's hooks are gone
    assert not decoder_blocks(model)[1]._forward_hooks


def count_block_runs(model) -> list[int]:
    """Per decoder block, a list entry counting its forward calls from now on."""
    calls = [0] * len(decoder_blocks(model))

    def counter(index):
        def count(module, args):
            calls[index] += 1

        return count

    for index, block in enumerate(decoder_blocks(model)):
        block.register_forward_pre_hook(counter(index))
    return calls


@pytest.mark.parametrize(
    "propagate, target, runs",
    [("original", "local", 1), ("pruned", "local", 1), ("pruned", "carried", 2), ("carried", "carried", 2)],
)
def test_the_statistics_pass_also_records_what_the_fit_needs(propagate, target, runs):
    """Each block runs on each calibration batch: once for its statistics, which also gives the fit its inputs and
    residual stream; once more on the unpruned model's inputs where the target is carried. Running the block again
    for the fit would cost a quarter of a SmolLM2 reconstruction's block passes (docs/BENCHMARKS.md, the 1-epoch
    profile); running it again pruned for the next block is not needed either (the fit gives the path's output)."""
    model, _ = tiny_random("llama")
    batches = token_batches(count=3, seq_len=16)
    spec = ReconstructSpec(epochs=1, batch_tokens=32, target=target)
    errors = {}

    def prune():
        activation = SCORERS["activation"]
        prune_width_layerwise(model, 64, activation, batches, 1e-4, propagate, reconstruct=spec, errors=errors)

    per_batch = block_runs_per_batch(model, batches, prune)
    assert per_batch == [runs] * len(per_batch)
    assert sorted(errors) == list(range(len(per_batch)))


def block_runs_per_batch(model, batches, prune) -> list[float]:
    """How many times each block of `model` runs on each calibration batch while `prune()` prunes it layer by layer
    (the layer runner's own captures of the block inputs and keyword arguments left out)."""
    calls = count_block_runs(model)
    LayerwiseRunner(model, batches)  # what those captures cost
    setup, calls[:] = list(calls), [0] * len(calls)
    prune()
    return [(count - before) / len(batches) for count, before in zip(calls, setup, strict=True)]


def next_block_inputs(monkeypatch, model, batches, propagate, spec, reduce=None):
    """The inputs each block hands the next while `model` is pruned layer by layer with the reconstruction, and how
    many times each block ran on each calibration batch for it."""
    handed = []
    advance = LayerwiseRunner.advance

    def record(runner, outputs):
        handed.append([output.clone() for output in outputs])
        advance(runner, outputs)

    def prune():
        prune_width_layerwise(
            model, 64, SCORERS["activation"], batches, 1e-4, propagate, reduce=reduce, reconstruct=spec
        )

    with monkeypatch.context() as patch:
        patch.setattr(LayerwiseRunner, "advance", record)
        runs = block_runs_per_batch(model, batches, prune)
    return handed, runs


@pytest.mark.parametrize("family", ["llama", "gemma2", "granite"])  # plain, post-feedforward norm, scaled residual
@pytest.mark.parametrize("propagate", ["pruned", "carried"])
def test_the_next_block_gets_the_pruned_blocks_output_without_running_it(monkeypatch, family, propagate):
    """Attention is not pruned, so the pruned block outputs its residual stream plus the fitted path's output, which
    the fit has computed: that is what the next block gets, as running the pruned block would give it."""
    model, _ = tiny_random(family, **({"residual_multiplier": 0.5} if family == "granite" else {}))
    batches = token_batches(count=2, seq_len=16)
    spec = ReconstructSpec(epochs=1, batch_tokens=32, target="carried")
    handed, runs = next_block_inputs(monkeypatch, model, batches, propagate, spec)

    runner = LayerwiseRunner(model, batches)  # the pruned model, now run block by block
    for index, outputs in enumerate(handed):
        expected = runner.run_block(index)
        for ours, theirs in zip(outputs, expected, strict=True):
            assert ours.shape == theirs.shape and ours.dtype == theirs.dtype
            torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
        runner.advance(expected)
    assert runs == [2] * len(handed)  # the statistics and the target's: none for the next block


@pytest.mark.parametrize("case", ["bfloat16", "all-reduce", "autocast"])
def test_where_the_fits_output_is_not_the_models_the_pruned_block_is_run(monkeypatch, case):
    """The fit computes in float32 outside autocast, before the all-reduce: a bfloat16 model, an autocast region or
    weights averaged over ranks afterwards compute something else, so there the pruned block runs for the next one."""
    model, _ = tiny_random("llama")
    model = model.to(torch.bfloat16) if case == "bfloat16" else model
    batches = token_batches(count=2, seq_len=16)
    spec = ReconstructSpec(epochs=1, batch_tokens=32, target="local")
    reduce = (lambda tensor: tensor * 1.0) if case == "all-reduce" else None
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=case == "autocast"):
        handed, runs = next_block_inputs(monkeypatch, model, batches, "pruned", spec, reduce)
    assert runs == [2] * len(handed)  # the statistics and the pruned block's for the next one
    runner = LayerwiseRunner(model, batches)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=case == "autocast"):
        for index, outputs in enumerate(handed):
            expected = runner.run_block(index)
            assert all(torch.equal(ours, theirs) for ours, theirs in zip(outputs, expected, strict=True)), index
            runner.advance(expected)


def test_the_pruner_without_an_all_reduce_lets_the_fit_hand_on_its_output():
    """`Pruner.prune` without `reduce` (one process) must not pass the layer driver a stand-in all-reduce: that would
    make every fit's output look changed afterwards, and the pruned block would run again for the next one."""
    model, _ = tiny_random("llama")
    batches = token_batches(count=2, seq_len=16)
    pruner = Pruner(ratio=0.5, calibration_mode="sequential", reconstruct={"epochs": 1, "batch_tokens": 32})
    runs = block_runs_per_batch(model, batches, lambda: pruner.prune(model, batches))
    assert runs == [2] * len(runs)  # the statistics and the carried target's: none for the next block
