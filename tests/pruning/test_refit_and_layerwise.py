import pytest
import torch
from peft import LoraConfig, get_peft_model

from prune_recover.arch import decoder_blocks, gated_mlps
from prune_recover.pruning.calibration import ActivationRecorder, NeuronStats, collect_activation_stats
from prune_recover.pruning.gram import GRAM_PANEL
from prune_recover.pruning.importance import SCORERS
from prune_recover.pruning.layerwise import LayerwiseRunner
from prune_recover.pruning.pruner import Pruner
from prune_recover.pruning.refit import refit_down_proj
from prune_recover.pruning.width import prune_width, prune_width_layerwise
from prune_recover.tiny_models import tiny_random
from tests.conftest import logits_around_a_change_in_one_autocast_region, token_batches


def down_inputs(model, layer, batches):
    captured = []
    handle = gated_mlps(model)[layer].down_proj.register_forward_pre_hook(
        lambda m, a: captured.append(a[0].reshape(-1, a[0].shape[-1]).detach())
    )
    with torch.no_grad():
        for batch in batches:
            model(batch)
    handle.remove()
    return torch.cat(captured).double()


def test_refit_is_the_least_squares_solution_and_beats_plain_slicing():
    model, _ = tiny_random("llama")
    batches = token_batches(count=4, seq_len=64)
    stats = collect_activation_stats(model, batches, gram=True)
    x = down_inputs(model, 0, batches)
    mlp = gated_mlps(model)[0]
    weight = mlp.down_proj.weight.detach().double().clone()
    keep = torch.arange(0, 128, 2)
    target = x @ weight.T

    refit_down_proj(mlp, keep, stats[0].gram, damp=0.0)

    refitted = mlp.down_proj.weight.detach().double()[:, keep]
    lstsq = torch.linalg.lstsq(x[:, keep], target).solution.T
    torch.testing.assert_close(refitted, lstsq, rtol=1e-4, atol=1e-5)
    plain_error = (x[:, keep] @ weight[:, keep].T - target).norm()
    refit_error = (x[:, keep] @ refitted.T - target).norm()
    assert refit_error < 0.9 * plain_error


def test_refit_under_lora_keeps_the_adapter_and_fits_the_effective_weight():
    model, _ = tiny_random("llama")
    batches = token_batches(count=4, seq_len=64)
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["down_proj"], init_lora_weights=False))
    stats = collect_activation_stats(peft_model, batches, gram=True)
    mlp = gated_mlps(peft_model)[0]
    effective = mlp.down_weight().double()
    lora_b = mlp.down_proj.lora_B["default"].weight.detach().clone()
    keep = torch.arange(0, 128, 2)
    x = down_inputs(peft_model, 0, batches)

    refit_down_proj(mlp, keep, stats[0].gram, damp=0.0)

    assert torch.equal(mlp.down_proj.lora_B["default"].weight, lora_b)
    expected = torch.linalg.lstsq(x[:, keep], x @ effective.T).solution.T
    torch.testing.assert_close(mlp.down_weight().double()[:, keep], expected, rtol=1e-4, atol=1e-5)


def test_refit_rejects_negative_damping():
    model, _ = tiny_random("llama")
    with pytest.raises(ValueError, match="non-negative"):
        refit_down_proj(gated_mlps(model)[0], torch.arange(4), torch.eye(128, dtype=torch.float64), damp=-1)


@pytest.mark.parametrize("family", ["llama", "gemma2", "qwen3"])
def test_layerwise_runner_reproduces_the_full_forward(family):
    model, _ = tiny_random(family, num_hidden_layers=5)
    batches = token_batches(count=2) + [torch.randint(3, 259, (1, 20))]
    runner = LayerwiseRunner(model, batches)
    for index in range(5):
        runner.advance(runner.run_block(index))
    base = model.model
    with torch.no_grad():
        for hidden, batch in zip(runner.hidden, batches, strict=True):
            expected = model(batch, output_hidden_states=True).hidden_states[-1]
            torch.testing.assert_close(base.norm(hidden), expected, rtol=1e-5, atol=1e-5)


def test_layerwise_original_equals_oneshot_and_sequential_differs():
    batches = token_batches(count=3, seq_len=48)
    oneshot, _ = tiny_random("llama")
    stats = collect_activation_stats(oneshot, batches, gram=True)
    kept_oneshot = prune_width(oneshot, 64, SCORERS["activation"], stats, refit_damp=1e-4)
    layerwise, _ = tiny_random("llama")
    kept_layerwise = prune_width_layerwise(layerwise, 64, SCORERS["activation"], batches, 1e-4, "original")
    sequential, _ = tiny_random("llama")
    kept_sequential = prune_width_layerwise(sequential, 64, SCORERS["activation"], batches, 1e-4, "pruned")

    assert all(torch.equal(kept_oneshot[i], kept_layerwise[i]) for i in range(4))
    assert torch.equal(kept_oneshot[0], kept_sequential[0])  # layer 0 sees the same inputs either way
    assert not all(torch.equal(kept_oneshot[i], kept_sequential[i]) for i in range(1, 4))
    tokens = batches[0]
    with torch.no_grad():
        torch.testing.assert_close(oneshot(tokens).logits, layerwise(tokens).logits, rtol=1e-4, atol=1e-4)
    assert sequential.config.intermediate_size == 64


def test_recorder_stats_follow_reset_and_remove_their_hooks():
    model, _ = tiny_random("llama")
    with ActivationRecorder(model, layers=[1]) as recorder:
        model(token_batches(count=1)[0])
        assert recorder.stats[1].tokens == 64
        recorder.reset()
        assert recorder.stats[1].tokens == 0
    assert not decoder_blocks(model)[1].mlp.down_proj._forward_pre_hooks


def test_gram_of_a_bf16_pass_is_a_bf16_product_and_float16_does_not_overflow():
    x = torch.randn(512, 48, generator=torch.Generator().manual_seed(0)).bfloat16()
    exact = x.double().T @ x.double()
    stats = NeuronStats.zeros(48, x.device, gram=True)
    with torch.autocast("cpu", dtype=torch.float16):  # the caller's autocast does not choose the product's dtype
        stats.add(x)
    assert torch.equal(stats.gram, (x.T @ x).double())  # computed in bf16 (the fast path of a bf16 pass)
    assert torch.allclose(stats.gram, exact, rtol=2**-8, atol=1e-2)
    assert torch.allclose(stats.sum_sq, x.double().square().sum(0), rtol=1e-6) and stats.tokens == 512
    large = torch.full((4096, 8), 8.0, dtype=torch.float16)  # every Gram entry 262,144 > float16's 65,504
    stats = NeuronStats.zeros(8, large.device, gram=True)
    stats.add(large)
    assert torch.equal(stats.gram, torch.full((8, 8), 262144.0, dtype=torch.float64))


def test_gram_wider_than_a_panel_is_the_full_symmetric_product():
    width = 2 * GRAM_PANEL + 88  # two full panels and a partial one
    generator = torch.Generator().manual_seed(0)
    batches = [torch.randn(300, width, generator=generator) for _ in range(2)]
    stats = NeuronStats.zeros(width, torch.device("cpu"), gram=True)
    for x in batches:
        stats.add(x)
    exact = sum(x.double().T @ x.double() for x in batches)
    assert torch.equal(stats.gram, stats.gram.T)
    torch.testing.assert_close(stats.gram, exact, rtol=1e-5, atol=1e-3)
    bf16 = NeuronStats.zeros(width, torch.device("cpu"), gram=True)
    bf16.add(batches[0].bfloat16())
    exact = batches[0].bfloat16().double().T @ batches[0].bfloat16().double()
    assert torch.equal(bf16.gram, bf16.gram.T) and torch.allclose(bf16.gram, exact, rtol=2**-8, atol=1e-1)


def test_recorder_hands_the_pass_dtype_to_the_statistics():
    model, _ = tiny_random("llama")
    captured = []
    hook = gated_mlps(model)[0].down_proj.register_forward_pre_hook(lambda m, a: captured.append(a[0].detach()))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        stats = collect_activation_stats(model, token_batches(count=1), gram=True)
    hook.remove()
    x = captured[0].reshape(-1, captured[0].shape[-1])
    assert x.dtype == torch.bfloat16 and torch.equal(stats[0].gram, (x.T @ x).double())


def test_refit_inside_an_autocast_region_takes_effect():
    """The refit overwrites down_proj in place: a forward pass later in the same autocast region must see it."""
    model, _ = tiny_random("llama")
    mlp = gated_mlps(model)[0]
    ids = torch.randint(0, model.config.vocab_size, (2, 16))
    stats = collect_activation_stats(model, [ids], gram=True)
    keep = torch.arange(0, mlp.intermediate_size, 2)
    before, inside, fresh = logits_around_a_change_in_one_autocast_region(
        model, ids, lambda: refit_down_proj(mlp, keep, stats[0].gram)
    )
    assert not torch.equal(before, fresh)
    assert torch.equal(inside, fresh)


def test_sequential_calibration_sees_the_pruned_prefix_under_autocast():
    """Under the training precision's autocast (the pruning callback's context) sequential calibration must
    calibrate each layer on the already-pruned layers' outputs, so it differs from layerwise calibration."""
    batches = [torch.randint(0, 256, (2, 32)) for _ in range(3)]
    pruned = {}
    for mode in ("layerwise", "sequential"):
        model, _ = tiny_random("llama")
        with torch.autocast("cpu", dtype=torch.bfloat16):
            Pruner("activation", ratio=0.5, calibration_mode=mode).prune(model, batches)
        pruned[mode] = gated_mlps(model)[-1].down_weight()
    assert not torch.equal(pruned["layerwise"], pruned["sequential"])
