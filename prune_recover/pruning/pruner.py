"""One pruning event, end to end: depth removal, then width pruning, with a record of what was done.

`Pruner` is built from the `pruning` config node and validates it on construction, so a bad
setting fails before any model is loaded. `plan` checks the target against a model config (no
weights needed); `prune` performs the event on a model. The Lightning callback and the
prune-only command both call `prune`; neither knows how scoring or surgery work.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence

import torch
from torch import nn
from transformers import PretrainedConfig

from prune_recover.arch import decoder_blocks, family_of, gated_mlps, unwrap
from prune_recover.lm import count_parameters, model_device
from prune_recover.logs import get_logger
from prune_recover.pruning.calibration import NeuronStats, collect_activation_stats, reduce_stats, same
from prune_recover.pruning.depth import choose_blocks, get_depth_criterion, removable_blocks
from prune_recover.pruning.gradients import collect_taylor_stats
from prune_recover.pruning.importance import OBS_ROUND, configured_scorer
from prune_recover.pruning.reconstruct import ReconstructSpec
from prune_recover.pruning.spec import DepthSpec, PruneEvent, PrunePlan, as_spec, check_calibration, refuse_prior_stats
from prune_recover.pruning.surgery import check_prunable_mlp, remove_blocks
from prune_recover.pruning.targets import ParamModel, WidthTarget
from prune_recover.pruning.width import prune_width, prune_width_layerwise
from prune_recover.settings import check_flag

log = get_logger(__name__)

Reduce = Callable[[torch.Tensor], torch.Tensor]


class Pruner:
    """Structured width (MLP neurons) and depth (decoder blocks) pruning of a causal LM.

    Args:
        importance: Neuron scorer name (`prune_recover.pruning.importance.SCORERS`).
        ratio: Fraction of MLP neurons to remove, in (0, 1).
        expansion_ratio: Target intermediate_size / hidden_size.
        target_params: Target total parameter count (after depth pruning too).
        round_to: Round the width to the nearest multiple of this.
        refit: Refit the surviving down_proj columns by least squares on calibration activations
            (needs calibration data, also for weight-only scorers).
        refit_damp: Ridge strength of the refit, relative to the mean activation energy.
        calibration_mode: `oneshot` (all layers' statistics in one forward pass; Gram matrices of
            every layer held at once), `layerwise` (same statistics, one layer's held at a time) or
            `sequential` (each layer calibrated on the outputs of the already-pruned layers) or `carried`
            (as sequential, with each layer refitted to reproduce the unpruned model's layer output: the error of
            the layers below is carried forward and made up for; needs `refit`).
        depth: Depth settings (`DepthSpec` fields).
        obs_round: Neurons `importance=obs` removes per round (1 = greedy, re-ranked after every removal).
        obs_shrink: `importance=obs` chooses on `G + obs_shrink * diag(G)` (0 = exact OBS; `obs.py`).
        reconstruct: Per-layer reconstruction after pruning (`ReconstructSpec` fields; needs a layer-wise
            calibration_mode).
        Leave all of ratio, expansion_ratio and target_params null for depth-only pruning.
    """

    def __init__(
        self,
        importance: str = "activation",
        ratio: float | None = None,
        expansion_ratio: float | None = None,
        target_params: float | None = None,
        round_to: int = 1,
        refit: bool = True,
        refit_damp: float = 1e-4,
        calibration_mode: str = "oneshot",
        depth: DepthSpec | Mapping | None = None,
        obs_round: int = OBS_ROUND,
        obs_shrink: float = 0.0,
        reconstruct: ReconstructSpec | Mapping | None = None,
    ):
        check_flag("pruning.refit", refit)
        self.scorer = configured_scorer(importance, refit, obs_round, obs_shrink)
        self.obs_shrink = obs_shrink if self.scorer.select is not None else None
        widths_given = any(value is not None for value in (ratio, expansion_ratio, target_params))
        self.target = WidthTarget(ratio, expansion_ratio, target_params, round_to) if widths_given else None
        self.depth = as_spec(DepthSpec, depth)
        if self.target is None and self.depth.num_blocks == 0:
            raise ValueError("nothing to prune: set pruning.ratio, expansion_ratio, target_params or depth.num_blocks")
        self.reconstruct = as_spec(ReconstructSpec, reconstruct)
        check_calibration(calibration_mode, refit, refit_damp, self.target is not None, self.reconstruct)
        self.refit = refit and self.target is not None
        self.refit_damp, self.calibration_mode = refit_damp, calibration_mode

    @property
    def needs_calibration(self) -> bool:
        """Whether `prune` needs calibration batches (data-driven scorer, refit, or a data-driven depth criterion)."""
        width_data = self.target is not None and (self.scorer.data_driven or self.refit or self.reconstruct.enabled)
        return width_data or self.depth.num_blocks > 0

    def plan(self, config: PretrainedConfig) -> PrunePlan:
        """Check the targets against a model config and return the final shape (reads no weights).

        Raises:
            ValueError: more blocks to remove than the model allows, or an unreachable width target.
        """
        family_of(config)
        params = ParamModel.from_config(config)
        num_layers = params.num_layers - self.depth.num_blocks
        if self.depth.num_blocks >= params.num_layers:
            raise ValueError(
                f"cannot remove {self.depth.num_blocks} of {params.num_layers} blocks (pruning.depth.num_blocks): "
                "at least one must remain"
            )
        if self.depth.num_blocks:
            removable = removable_blocks(params.num_layers, self.depth.protect_first, self.depth.protect_last)
            if self.depth.num_blocks > len(removable):
                raise ValueError(
                    f"pruning.depth.num_blocks={self.depth.num_blocks} but the model has {params.num_layers} blocks, "
                    f"{len(removable)} of them removable with criterion '{self.depth.criterion}' "
                    f"(first {self.depth.protect_first} and last {self.depth.protect_last} protected)"
                )
        width = self.target.width(params, num_layers) if self.target else params.intermediate_size
        return PrunePlan(intermediate_size=width, num_layers=num_layers, params=params.total(width, num_layers))

    def prune(
        self,
        model: nn.Module,
        calibration: Sequence[torch.Tensor] = (),
        width: int | None = None,
        num_blocks: int | None = None,
        stats: Mapping[int, NeuronStats] | None = None,
        optimizers: Iterable[torch.optim.Optimizer] = (),
        reduce: Reduce | None = None,
    ) -> PruneEvent:
        """Prune `model` in place: first `num_blocks` blocks, then every MLP to `width` neurons.

        Args:
            model: The (possibly peft-wrapped) causal LM.
            calibration: Token batches `[batch, seq_len]` for data-driven scoring and the refit.
            width: MLP width to prune to; None takes the plan's final width (or skips width pruning).
            num_blocks: Blocks to remove now; None takes `depth.num_blocks`.
            stats: Activation statistics already gathered for every current layer (e.g. from training
                batches); they replace the calibration forward pass for the width scores and refit.
            optimizers: Optimizers whose state must follow the surgery.
            reduce: Applied to every statistic and block score before it is used; under DDP an
                all-reduce mean, so that every rank takes identical decisions. None: one process (the layer-wise
                reconstruction then hands each fit's output on instead of running the pruned block again).
        """
        start = time.perf_counter()
        optimizers = list(optimizers)
        config = unwrap(model).config
        if width is None and self.target is not None:
            width = self.plan(config).intermediate_size
        num_blocks = self.depth.num_blocks if num_blocks is None else num_blocks
        self._check_request(model, calibration, width, num_blocks, stats)
        removed = self._prune_depth(model, calibration, num_blocks, optimizers, reduce or same) if num_blocks else []
        if stats is not None and removed:
            survivors = [index for index in sorted(stats) if index not in set(removed)]
            stats = {new: stats[old] for new, old in enumerate(survivors)}
        kept, errors = {}, {}
        if width is not None and width < gated_mlps(model)[0].intermediate_size:
            kept = self._prune_width(model, calibration, width, stats, optimizers, reduce, errors)
        fitted = bool(kept) and self.reconstruct.enabled
        event = PruneEvent(
            importance=self.scorer.name,
            intermediate_size=config.intermediate_size,
            num_layers=len(decoder_blocks(model)),
            params=count_parameters(model),
            removed_blocks=removed,
            depth_criterion=self.depth.criterion if removed else None,
            refit=self.refit,
            reconstruct_epochs=self.reconstruct.epochs if fitted else 0,
            reconstruct_normalized=fitted and self.reconstruct.normalized,
            reconstruct_precision=self.reconstruct.precision if fitted else None,
            obs_shrink=self.obs_shrink if kept else None,
            calibration_mode=self.calibration_mode if self.needs_calibration else None,
            calibration_tokens=sum(batch.numel() for batch in calibration) if self.needs_calibration else 0,
            seconds=time.perf_counter() - start,
            kept=kept,
            reconstructed=errors,
        )
        log.info("Pruned: %s", event.to_dict())
        return event

    def _check_request(self, model: nn.Module, calibration, width: int | None, num_blocks: int, stats) -> None:
        """Refuse, before any surgery, what `prune` could only do in part or not as configured."""
        blocks, current = len(decoder_blocks(model)), gated_mlps(model)[0].intermediate_size
        if not isinstance(num_blocks, int) or not 0 <= num_blocks < blocks:
            raise ValueError(f"num_blocks must be an integer in [0, {blocks - 1}] ({blocks} blocks): {num_blocks!r}")
        if width is not None and not 1 <= width <= current:
            raise ValueError(f"width must be between 1 and the current MLP width {current}, got {width}")
        if self.needs_calibration and not calibration and (stats is None or num_blocks):
            raise ValueError("this pruning configuration needs calibration batches, none were given")
        if stats is not None:
            refuse_prior_stats(self.calibration_mode, self.reconstruct)
        if width is not None and width < current:  # the widths change
            if self.scorer.needs == "gradients" and not calibration:
                raise ValueError(f"importance={self.scorer.name} needs gradients on calibration batches, none given")
            for mlp in gated_mlps(model):
                check_prunable_mlp(mlp)

    def _prune_depth(
        self, model: nn.Module, calibration, num_blocks: int, optimizers: list, reduce: Reduce
    ) -> list[int]:
        criterion = get_depth_criterion(self.depth.criterion)
        samples = torch.cat(list(calibration))[: self.depth.num_samples, : self.depth.seq_len]
        scores = criterion.fn(model, list(samples.split(max(1, calibration[0].shape[0]))))
        # reduced on the model's device: under DDP on GPUs an all-reduce (NCCL) takes no CPU tensor
        scores = reduce(scores.to(model_device(model))).cpu()
        blocks = choose_blocks(scores, num_blocks, self.depth.protect_first, self.depth.protect_last)
        log.info("Depth %s scores %s -> removing blocks %s", criterion.name, scores.tolist(), blocks)
        return remove_blocks(model, blocks, optimizers)

    def _prune_width(
        self, model: nn.Module, calibration, width: int, stats, optimizers: list, reduce: Reduce | None, errors: dict
    ) -> dict[int, torch.Tensor]:
        damp = self.refit_damp if self.refit else None
        if not (self.scorer.data_driven or self.refit or self.reconstruct.enabled):
            return prune_width(model, width, self.scorer, None, None, optimizers)
        taylor = None
        if self.scorer.needs == "gradients":
            saliencies = collect_taylor_stats(model, calibration)
            taylor = {index: (reduce or same)(value) for index, value in saliencies.items()}
        if self.calibration_mode == "oneshot" or stats is not None:
            if stats is None:
                stats = collect_activation_stats(model, calibration, gram=self.refit)
            stats = {index: reduce_stats(layer_stats, reduce or same) for index, layer_stats in stats.items()}
            for index, saliency in (taylor or {}).items():
                stats[index].taylor = saliency
            return prune_width(model, width, self.scorer, stats, damp, optimizers)
        propagate = {"layerwise": "original", "sequential": "pruned", "carried": "carried"}[self.calibration_mode]
        return prune_width_layerwise(
            model,
            width,
            self.scorer,
            calibration,
            damp,
            propagate,
            taylor,
            optimizers,
            reduce,
            self.reconstruct,
            errors,
        )
