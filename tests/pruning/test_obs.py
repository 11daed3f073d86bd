"""`importance=obs`: the selection minimises the layer's refitted output error."""

import itertools

import pytest
import torch

from prune_recover.arch import gated_mlps
from prune_recover.pruning.calibration import collect_activation_stats
from prune_recover.pruning.importance import select_neurons
from prune_recover.pruning.obs import obs_keep
from prune_recover.pruning.pruner import Pruner
from prune_recover.pruning.refit import refit_down_proj
from prune_recover.tiny_models import tiny_random

DAMP = 1e-4


def refit_error(weight, gram, keep, damp=DAMP):
    """The layer's (damped) output error after the least-squares refit of the kept columns `keep`."""
    gram, weight = gram.double(), weight.double()
    ridge = damp * gram.diagonal().mean() + torch.finfo(torch.float64).tiny
    damped = gram + ridge * torch.eye(len(gram), dtype=gram.dtype)
    refitted = torch.linalg.solve(damped[keep][:, keep], damped[keep] @ weight.T).T
    full = torch.zeros_like(weight)
    full[:, keep] = refitted
    difference = full - weight
    return torch.einsum("hi,ij,hj->", difference, damped, difference).item()


@pytest.fixture(scope="module")
def layers():
    """(down_proj weight, Gram of its input, activation norms) of every layer of a tiny Llama on random tokens."""
    torch.manual_seed(0)
    model, _ = tiny_random("llama")
    batches = [torch.randint(3, 200, (4, 48)) for _ in range(4)]
    stats = collect_activation_stats(model, batches, gram=True)
    return [
        (mlp.down_weight().detach(), stats[i].gram, stats[i].activation_norm) for i, mlp in enumerate(gated_mlps(model))
    ]


def test_removing_one_neuron_picks_the_neuron_an_exhaustive_search_picks(layers):
    for weight, gram, _ in layers:
        n = gram.shape[0]
        errors = [refit_error(weight, gram, torch.tensor([j for j in range(n) if j != q])) for q in range(n)]
        (removed,) = set(range(n)) - set(obs_keep(weight, gram, n - 1, DAMP, round_size=1).tolist())
        assert removed == min(range(n), key=errors.__getitem__)


@pytest.mark.parametrize("width", [96, 64, 32])
def test_the_refitted_output_error_is_never_larger_than_after_activation_norm_selection(layers, width):
    for weight, gram, norm in layers:
        ours = refit_error(weight, gram, obs_keep(weight, gram, width, DAMP, round_size=8))
        by_norm = refit_error(weight, gram, select_neurons(norm, width))
        assert ours <= by_norm * (1 + 1e-9)


def test_greedy_removal_comes_close_to_the_best_subset_on_a_small_layer():
    torch.manual_seed(1)
    x = torch.randn(200, 8, dtype=torch.float64) @ torch.randn(8, 8, dtype=torch.float64)  # correlated inputs
    weight, gram = torch.randn(5, 8, dtype=torch.float64), x.T @ x
    kept = obs_keep(weight, gram, 5, DAMP, round_size=1)
    best = min(itertools.combinations(range(8), 5), key=lambda s: refit_error(weight, gram, torch.tensor(s)))
    assert refit_error(weight, gram, kept) <= refit_error(weight, gram, torch.tensor(best)) * 1.25


def test_obs_needs_the_refit_and_a_positive_round():
    with pytest.raises(ValueError, match="set pruning.refit=true"):
        Pruner(importance="obs", ratio=0.4, refit=False)
    with pytest.raises(ValueError, match="obs_round must be a positive integer"):
        Pruner(importance="obs", ratio=0.4, obs_round=0)


def uncompensated_cost(weight, gram):
    """What removing each neuron costs the layer's output with nothing made up for: `||W[:, q]||^2 G[q, q]`."""
    return weight.double().square().sum(0) * gram.double().diagonal()


@pytest.mark.parametrize("width", [96, 64, 32])
def test_a_large_shrink_chooses_by_the_cost_of_removal_with_nothing_made_up_for(layers, width):
    exact_differs = []
    for weight, gram, _ in layers:
        expected = select_neurons(uncompensated_cost(weight, gram), width)
        assert torch.equal(obs_keep(weight, gram, width, DAMP, round_size=8, shrink=1e8), expected)
        exact_differs.append(not torch.equal(obs_keep(weight, gram, width, DAMP, round_size=8), expected))
    assert any(exact_differs)  # so it is the shrink that decides, not a layer where both choices agree


def test_the_pruner_chooses_on_the_shrunk_gram_and_reports_the_shrink():
    torch.manual_seed(0)
    batches = [torch.randint(3, 200, (2, 32)) for _ in range(2)]
    model, _ = tiny_random("llama")
    stats = collect_activation_stats(model, batches, gram=True)
    gates = [mlp.gate_proj.weight.detach().clone() for mlp in gated_mlps(model)]
    costs = [uncompensated_cost(mlp.down_weight(), stats[i].gram) for i, mlp in enumerate(gated_mlps(model))]
    event = Pruner(importance="obs", ratio=0.5, obs_shrink=1e8).prune(model, batches)
    for i, mlp in enumerate(gated_mlps(model)):
        expected = select_neurons(costs[i], 64)
        assert torch.equal(event.kept[i], expected)
        assert torch.equal(mlp.gate_proj.weight, gates[i][expected])  # the refit changes down_proj only
    assert event.to_dict()["obs_shrink"] == 1e8
    assert Pruner(ratio=0.5).prune(tiny_random("llama")[0], batches).to_dict()["obs_shrink"] is None


@pytest.mark.parametrize("shrink", [-1.0, float("nan"), float("inf"), "1", True])
def test_a_bad_obs_shrink_is_refused_with_what_is_allowed(shrink):
    with pytest.raises(ValueError, match="pruning.obs_shrink must be a finite non-negative number, got"):
        Pruner(importance="obs", ratio=0.4, obs_shrink=shrink)


def test_obs_prunes_a_model_end_to_end_in_every_calibration_mode():
    torch.manual_seed(0)
    batches = [torch.randint(3, 200, (2, 32)) for _ in range(2)]
    for mode in ("oneshot", "layerwise", "sequential", "carried"):
        model, _ = tiny_random("qwen2")
        event = Pruner(importance="obs", ratio=0.5, calibration_mode=mode).prune(model, batches)
        assert model.config.intermediate_size == event.intermediate_size == 64
        assert torch.isfinite(model(batches[0]).logits).all()


def rank_one_reference(weight, gram, width, damp, round_size):
    """The selection removing each round's neurons one at a time with rank-one OBS updates (the textbook loop)."""
    n = gram.shape[0]
    ridge = damp * gram.diagonal().mean() + torch.finfo(torch.float64).tiny
    inverse = torch.linalg.inv(gram + ridge * torch.eye(n, dtype=gram.dtype))
    current, alive = weight.clone(), torch.ones(n, dtype=torch.bool)
    while alive.sum() > width:
        cost = current.square().sum(0) / inverse.diagonal()
        cost[~alive] = torch.inf
        for q in torch.argsort(cost, stable=True)[: min(round_size, int(alive.sum()) - width)].tolist():
            pivot = inverse[q, q]
            current -= torch.outer(current[:, q], inverse[q]) / pivot
            inverse -= torch.outer(inverse[:, q], inverse[q]) / pivot
            current[:, q], inverse[q, :], inverse[:, q], alive[q] = 0, 0, 0, False
    return alive.nonzero().flatten()


@pytest.mark.parametrize("round_size", [1, 5, 8])
def test_the_block_update_of_a_round_keeps_what_one_by_one_removal_keeps(layers, round_size):
    for weight, gram, _ in layers:
        expected = rank_one_reference(weight.double(), gram.double(), 40, DAMP, round_size)
        assert torch.equal(obs_keep(weight, gram, 40, DAMP, round_size), expected)


def carried_problem(seed=2, tokens=300, n=10, hidden=6):
    """Inputs of a pruned prefix `x`, the unpruned model's inputs `target` on the same tokens, and a weight."""
    torch.manual_seed(seed)
    target = torch.randn(tokens, n, dtype=torch.float64) @ torch.randn(n, n, dtype=torch.float64)
    x = target + 0.3 * torch.randn(tokens, n, dtype=torch.float64)  # what the pruned layers below leave
    return x, target, torch.randn(hidden, n, dtype=torch.float64)


def carried_error(x, target, weight, keep):
    """`min ||x_S W'^T - target W^T||^2` over `W'` (plain least squares, no ridge)."""
    solution = torch.linalg.lstsq(x[:, keep], target @ weight.T).solution
    return (x[:, keep] @ solution - target @ weight.T).square().sum().item()


def test_the_carried_refit_reproduces_the_unpruned_output_from_the_pruned_inputs():
    mlp = gated_mlps(tiny_random("llama")[0])[0]
    hidden, n = mlp.down_weight().shape
    x, target, weight = carried_problem(tokens=400, n=n, hidden=hidden)
    mlp.down_proj.weight.data = weight.float()
    keep = torch.arange(0, n, 3)
    refit_down_proj(mlp, keep, x.T @ x, damp=0.0, cross=x.T @ target)
    expected = torch.linalg.lstsq(x[:, keep], target @ weight.float().double().T).solution.T
    torch.testing.assert_close(mlp.down_weight()[:, keep].double(), expected, rtol=1e-4, atol=1e-5)


def test_with_a_cross_term_one_removal_picks_the_exhaustive_searchs_neuron_for_the_carried_target():
    x, target, weight = carried_problem()
    n = x.shape[1]
    errors = [carried_error(x, target, weight, [j for j in range(n) if j != q]) for q in range(n)]
    kept = obs_keep(weight, x.T @ x, n - 1, 0.0, round_size=1, cross=x.T @ target)
    (removed,) = set(range(n)) - set(kept.tolist())
    assert removed == min(range(n), key=errors.__getitem__)


def test_carried_calibration_needs_the_refit():
    with pytest.raises(ValueError, match="calibration_mode=carried .* pruning.refit=true"):
        Pruner(importance="activation", ratio=0.4, refit=False, calibration_mode="carried")
