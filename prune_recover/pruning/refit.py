"""Least-squares refit of down_proj after neuron removal.

With `X` the calibration activations entering down_proj (tokens x intermediate) and `W` its
weight, pruning keeps the columns `S`. Instead of `W[:, S]` we use the `W'` that best reproduces
the unpruned output on the calibration tokens:

    W' = argmin ||X_S W'^T - X W^T||^2 + damp * mean(diag(G_SS)) * ||W'||^2
       = (W G[:, S]) (G_SS + damp * mean(diag(G_SS)) I)^-1,   with G = X^T X.

Under `calibration_mode=carried` the target is the unpruned model's output `X_d W^T` (X_d: its down_proj
input on the same tokens, X: this model's, after the already-pruned layers below), so that each layer also
makes up for the error the layers below left: `G[:, S]` becomes `C[S]^T` with `C = X^T X_d`.

The layout stays the plain Hugging Face one (only the values of the kept columns change), and
`G` is the Gram matrix that `ActivationRecorder(gram=True)` accumulates.
"""

from __future__ import annotations

import torch

from prune_recover.arch import GatedMLP, base_linear


@torch.no_grad()
def refit_down_proj(
    mlp: GatedMLP, keep: torch.Tensor, gram: torch.Tensor, damp: float = 1e-4, cross: torch.Tensor | None = None
) -> None:
    """Overwrite the kept columns of `mlp.down_proj` with their least-squares refit (before slicing).

    Under LoRA the refit targets the effective weight and the base weight absorbs the change, so
    the adapter's own contribution is preserved.

    Args:
        mlp: The layer, still at full width.
        keep: Indices of the neurons that will be kept.
        gram: `X^T X` of the down_proj input over calibration tokens, `[intermediate, intermediate]`.
        damp: Ridge strength relative to the mean diagonal of the kept block.
        cross: `X^T X_target` when the output to reproduce is the unpruned model's `X_target W^T` rather than
            `X W^T` (`calibration_mode=carried`); the solution is then `W cross[S]^T (G_SS + ridge)^-1`.
    """
    if damp < 0:
        raise ValueError(f"refit damping must be non-negative, got {damp}")
    keep = keep.to(gram.device)
    effective = mlp.down_weight().detach().to(gram.device, torch.float64)
    kept_gram = gram[keep][:, keep]
    ridge = damp * kept_gram.diagonal().mean()
    if not torch.isfinite(ridge) or kept_gram.diagonal().max() <= 0:
        return  # no signal on the kept neurons: nothing to fit
    identity = torch.eye(len(keep), dtype=gram.dtype, device=gram.device)
    system = kept_gram + (ridge + torch.finfo(torch.float64).tiny) * identity
    target = gram if cross is None else cross.to(gram.device, gram.dtype)
    solved = torch.linalg.solve(system, target[keep] @ effective.T).T  # [hidden, kept]
    base = base_linear(mlp.down_proj).weight
    delta = effective[:, keep] - base.detach().to(gram.device, torch.float64)[:, keep]  # LoRA share, zero without LoRA
    base.data[:, keep.to(base.device)] = (solved - delta).to(base.device, base.dtype)
    torch.clear_autocast_cache()  # a forward pass later in the same autocast region must see the new values
