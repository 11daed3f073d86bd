"""optipfair 0.4.2, the peer the scorer benches compare against (`pip install --no-deps optipfair==0.4.2`)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from prune_recover.lm import forward_precision

INSTALL = "pip install --no-deps optipfair==0.4.2"


def optipfair_installed() -> bool:
    try:
        import optipfair  # noqa: F401
    except ImportError:
        print(f"optipfair not installed: skipping its rows ({INSTALL})")
        return False
    return True


def optipfair_prune(model, ratio: float, batches: Sequence[torch.Tensor] | None, precision: str = "float32") -> None:
    """Prune `model`'s MLPs in place with optipfair: its static MAW selection without `batches`, its data-driven
    hybrid with them, the calibration pass in `precision`."""
    from optipfair import prune_model

    with forward_precision(precision, model.device):
        prune_model(
            model,
            pruning_type="MLP_GLU",
            neuron_selection_method="MAW",
            pruning_percentage=ratio * 100,
            dataloader=None if batches is None else [{"input_ids": batch} for batch in batches],
            show_progress=False,
        )
