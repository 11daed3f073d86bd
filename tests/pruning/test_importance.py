import numpy as np
import pytest
import torch

from prune_recover.arch import gated_mlps
from prune_recover.pruning.calibration import collect_activation_stats
from prune_recover.pruning.gradients import collect_taylor_stats
from prune_recover.pruning.importance import SCORERS, get_scorer, select_neurons
from prune_recover.tiny_models import tiny_random
from tests.conftest import token_batches


def numpy_rows(mlp):
    return mlp.gate_weight().detach().numpy(), mlp.up_weight().detach().numpy()


# Independent re-statements of the published formulas, in NumPy.
REFERENCE = {
    "maw": lambda g, u: np.abs(g).max(1) + np.abs(u).max(1),
    "mk": lambda g, u: g.max(1) + np.abs(g.min(1)) + u.max(1) + np.abs(u.min(1)),
    "vow": lambda g, u: g.var(1, ddof=1) + u.var(1, ddof=1),
    "pon": lambda g, u: np.abs(g).sum(1) * np.abs(u).sum(1),
    "l2": lambda g, u: np.sqrt((g**2).sum(1)) + np.sqrt((u**2).sum(1)),
}


@pytest.mark.parametrize("name", sorted(REFERENCE))
@pytest.mark.parametrize("family", ["llama", "phi3"])
def test_weight_scorers_match_numpy(name, family):
    model, _ = tiny_random(family)
    for mlp in gated_mlps(model):
        expected = REFERENCE[name](*numpy_rows(mlp))
        np.testing.assert_allclose(get_scorer(name)(mlp).numpy(), expected, rtol=1e-5)


def test_activation_and_wanda_match_manual_hooks():
    model, _ = tiny_random("llama")
    batches = token_batches()
    stats = collect_activation_stats(model, batches, gram=True)
    captured = []
    block = model.model.layers[2]
    handle = block.mlp.down_proj.register_forward_pre_hook(lambda m, a: captured.append(a[0].reshape(-1, 128)))
    with torch.no_grad():
        for batch in batches:
            model(batch)
    handle.remove()
    x = torch.cat(captured).double()
    assert stats[2].tokens == x.shape[0] == 3 * 2 * 32
    torch.testing.assert_close(stats[2].gram, x.T @ x, rtol=1e-6, atol=1e-6)
    norm = x.norm(dim=0)
    torch.testing.assert_close(SCORERS["activation"](gated_mlps(model)[2], stats[2]), norm)
    down = block.mlp.down_proj.weight.double()
    torch.testing.assert_close(SCORERS["wanda"](gated_mlps(model)[2], stats[2]), norm * down.norm(dim=0))


def test_taylor_matches_autograd_per_batch_and_restores_the_model():
    model, _ = tiny_random("llama")
    batches = token_batches(count=2)
    flags = [p.requires_grad for p in model.parameters()]
    saliency = collect_taylor_stats(model, batches)
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())
    mlp = model.model.layers[1].mlp
    expected = torch.zeros(128, dtype=torch.float64)
    for batch in batches:
        model.zero_grad()
        model(batch, labels=batch).loss.backward()
        g, u, d = (m.weight for m in (mlp.gate_proj, mlp.up_proj, mlp.down_proj))
        expected += (g.grad * g).abs().sum(1).double() + (u.grad * u).abs().sum(1).double()
        expected += (d.grad * d).abs().sum(0).double()
    torch.testing.assert_close(saliency[1], expected, rtol=1e-5, atol=1e-9)


def test_data_driven_scorer_without_stats_is_a_clear_error():
    model, _ = tiny_random("llama")
    with pytest.raises(ValueError, match="needs calibration activations"):
        SCORERS["wanda"](gated_mlps(model)[0])


def test_unknown_scorer_lists_the_known_ones():
    with pytest.raises(ValueError, match="Unknown importance scorer 'magnitude'.*maw, mk, vow, pon, l2, activation"):
        get_scorer("magnitude")


def test_selection_keeps_top_scores_in_index_order_and_breaks_ties_by_index():
    scores = torch.tensor([0.5, 2.0, 1.0, 2.0, 1.0, 0.1])
    assert select_neurons(scores, 3).tolist() == [1, 2, 3]
    assert select_neurons(scores, 4).tolist() == [1, 2, 3, 4]
    with pytest.raises(ValueError, match="cannot keep 7 of 6"):
        select_neurons(scores, 7)
