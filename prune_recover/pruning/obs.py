"""Joint selection and refit (`importance=obs`): drop the neurons whose removal costs the layer's output least.

With `X` the down_proj input on calibration tokens (tokens x n), `G = X^T X` damped as the refit damps it,
`H = G^-1` and `W` the down_proj weight (hidden x n), removing neuron `q` while refitting the others by least
squares raises the layer's output error `||X_S W_S^T - X W^T||^2` by exactly

    cost(q) = ||W[:, q]||^2 / H[q, q]                      (Optimal Brain Surgeon on the layer's inputs)

and the refitted weights and the inverse Gram of the remaining neurons follow by rank-one updates:

    W <- W - W[:, q] H[q, :] / H[q, q],      H <- H - H[:, q] H[q, :] / H[q, q].

`obs_keep` removes neurons in rounds of `round_size`: each round ranks the alive neurons by `cost`, takes
the cheapest `round_size` and removes them together (the block form of the rank-one updates, with
`H[R, R]^-1`; the result is that of removing them one at a time), so the next round is charged for what is
already gone. A round of 1 is the greedy optimum at every step. The choice is made on the statistics it is
given: with `calibration_mode=sequential` each layer is chosen on the already-pruned prefix's activations;
with `calibration_mode=carried` also against the unpruned model's output (`cross`: removal then starts from
the full-width least-squares fit `W C^T H` to that output). The final weights come from the same refit as
`activation + refit` (`refit.py`), in the plain Hugging Face layout.

`shrink` (`pruning.obs_shrink`) makes the choice, not the refit, on `G + shrink * diag(G)`: the neurons' correlations
are shrunk toward none. At 0 the choice is exact OBS on the calibration tokens; as it grows the cost tends to
`||W[:, q]||^2 G[q, q]`, the error of removing `q` with nothing made up for, which ranks as `wanda` does (its score
squared). Exact OBS removes the neurons that the others can stand in for on the calibration text, and those
correlations need not hold on other text: on SmolLM2-135M with WikiText calibration it leaves held-out code at
29.21 / 62.69 / 159.45 ppl at 20 / 40 / 60%, and a shrink of 1 at 20.98 / 38.72 / 97.36, WikiText-2 moving by
-0.17 / +0.02 / +0.60 (docs/BENCHMARKS.md, `prune_scorers_obs_shrink`).
"""

from __future__ import annotations

import torch

from prune_recover.arch import GatedMLP
from prune_recover.pruning.calibration import NeuronStats


@torch.no_grad()
def obs_keep(
    weight: torch.Tensor,
    gram: torch.Tensor,
    width: int,
    damp: float,
    round_size: int,
    cross: torch.Tensor | None = None,
    shrink: float = 0.0,
) -> torch.Tensor:
    """Indices (ascending) of the `width` neurons kept by progressive OBS removal.

    Args:
        weight: down_proj weight `[hidden, n]`.
        gram: `X^T X` of the down_proj input, `[n, n]`.
        damp: Ridge strength relative to the mean diagonal of `gram` (as the refit uses it).
        round_size: Neurons removed per round (ranked once per round, removed together).
        cross: `X^T X_target` when the layer must reproduce the output of other inputs `X_target` (the
            unpruned model's, under `calibration_mode=carried`); None means `X_target = X`.
        shrink: The choice is made on `gram + shrink * diag(gram)` (module docstring); 0 is exact OBS.
    """
    n = gram.shape[0]
    if not 0 < width <= n:
        raise ValueError(f"cannot keep {width} of {n} neurons")
    if round_size < 1:
        raise ValueError(f"pruning.obs_round must be >= 1, got {round_size}")
    gram = gram.double()
    ridge = damp * gram.diagonal().mean() + torch.finfo(torch.float64).tiny
    if not shrink >= 0:
        raise ValueError(f"pruning.obs_shrink must be >= 0, got {shrink}")
    damped = gram + ridge * torch.eye(n, dtype=gram.dtype, device=gram.device) + shrink * torch.diag(gram.diagonal())
    inverse = torch.linalg.inv(damped)
    current = weight.detach().to(gram.device, torch.float64)
    if cross is not None:  # the full-width least-squares fit to the target output is where removal starts
        current = current @ cross.to(gram.device, torch.float64).T @ inverse
    current = current.clone()
    alive = torch.ones(n, dtype=torch.bool, device=gram.device)
    remaining = n
    while remaining > width:
        cost = current.square().sum(0) / inverse.diagonal().clamp_min(torch.finfo(torch.float64).tiny)
        cost[~alive] = torch.inf
        removed = torch.argsort(cost, stable=True)[: min(round_size, remaining - width)]
        # Removing the round's neurons one by one with rank-one updates ends in this block update (the Schur
        # complement does not depend on the order): one [n, r] x [r, n] product, not r memory-bound outer products.
        rows = torch.linalg.solve(inverse[removed][:, removed], inverse[removed])  # H_RR^-1 H_R:
        current -= current[:, removed] @ rows
        inverse -= inverse[:, removed] @ rows
        current[:, removed] = 0
        inverse[removed] = 0
        inverse[:, removed] = 0
        alive[removed] = False
        remaining -= len(removed)
    return alive.nonzero().flatten()


def obs_select(
    mlp: GatedMLP, stats: NeuronStats, width: int, damp: float, round_size: int, shrink: float = 0.0
) -> torch.Tensor:
    """`obs_keep` for one gated MLP from its calibration statistics (which must hold the Gram matrix)."""
    if stats is None or stats.gram is None:
        raise ValueError("importance=obs needs calibration statistics with a Gram matrix (pruning.refit=true)")
    return obs_keep(mlp.down_weight(), stats.gram, width, damp, round_size, stats.cross, shrink)
