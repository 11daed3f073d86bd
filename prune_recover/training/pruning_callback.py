"""Lightning callback that prunes at scheduled training steps: schedule -> score -> surgery -> log.

At each event it asks the `Pruner` to prune `pl_module.model` (the optimizer's Adam moments are
sliced, not reset; the LR schedule carries on), re-wraps the model under DDP, and logs the new
parameter count and perplexity. Its state (the planned events, those done, the base measurement)
goes into checkpoints, so a resumed run continues the schedule where it stopped; the module
rebuilds the pruned shapes from the checkpoint's config.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning as L

from prune_recover.arch import unwrap
from prune_recover.evaluation.evaluator import Evaluator
from prune_recover.evaluation.report import model_summary
from prune_recover.logs import get_logger
from prune_recover.pruning.calibration import ActivationRecorder
from prune_recover.pruning.pruner import Pruner
from prune_recover.pruning.schedule import PruningSchedule, ScheduledEvent
from prune_recover.pruning.spec import refuse_prior_stats
from prune_recover.training.distributed import FSDP_PRUNING_HELP, all_reduce_mean, is_fsdp, rewrap_ddp
from prune_recover.training.loggers import set_wandb_summary

log = get_logger(__name__)
STATS_SOURCES = ("calibration", "training")


class PruningCallback(L.Callback):
    """Prune a `RecoveryModule`'s model on a schedule.

    Args:
        pruner: What to prune and how (`Pruner`, built from the `pruning` config node); None trains
            without pruning (the callback then only measures the model before training).
        schedule: `PruningSchedule` fields (`kind`, `start_step`, `end_step`, `num_events`).
        stats_source: `calibration` scores on the data module's calibration batches at each event;
            `training` scores on activation statistics accumulated from the training batches since
            the previous event (no extra forward pass; under DDP they are averaged across ranks); an event at
            step 0 has none and uses the calibration batches.
        evaluator: Perplexity (and tasks) before pruning; perplexity after each event. None skips both.
    """

    def __init__(
        self,
        pruner: Pruner | None,
        schedule: PruningSchedule | Mapping | None = None,
        stats_source: str = "calibration",
        evaluator: Evaluator | None = None,
    ):
        if stats_source not in STATS_SOURCES:
            raise ValueError(f"pruning stats_source must be one of {STATS_SOURCES}, got '{stats_source}'")
        if stats_source == "training" and pruner is not None:
            refuse_prior_stats(pruner.calibration_mode, pruner.reconstruct)
        self.pruner = pruner
        self.schedule = schedule if isinstance(schedule, PruningSchedule) else PruningSchedule(**(schedule or {}))
        self.stats_source = stats_source
        self.evaluator = evaluator
        self.planned: list[ScheduledEvent] = []
        self.events: list[dict] = []
        self.base: dict | None = None
        self._recorder: ActivationRecorder | None = None
        self._restored_statistics: dict | None = None  # training statistics of a checkpoint, until recording resumes
        self.last_event = None  # the latest PruneEvent, kept indices included (for inspection)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.planned or self.pruner is None:
            return  # planned on the unpruned model, restored from a checkpoint, or nothing to prune
        self.planned = self.plan_events(unwrap(pl_module.model).config, trainer)
        if is_fsdp(trainer.strategy):
            self._prune_before_sharding(trainer, pl_module)

    def plan_events(self, config, trainer: L.Trainer) -> list[ScheduledEvent]:
        """The schedule's events for a model of `config` (its config alone: the job checks them before weights
        load), refused unless all come before `trainer.max_steps` and, under FSDP, at step 0."""
        plan = self.pruner.plan(config)
        round_to = self.pruner.target.round_to if self.pruner.target else 1
        events = self.schedule.events(
            config.intermediate_size, plan.intermediate_size, self.pruner.depth.num_blocks, round_to
        )
        last = events[-1].step
        if trainer.max_steps is not None and 0 <= trainer.max_steps <= last:
            raise ValueError(
                f"the last pruning event is at step {last} but trainer.max_steps is {trainer.max_steps}: the model "
                "would never be fully pruned. Raise trainer.max_steps or end the schedule earlier"
            )
        if is_fsdp(trainer.strategy) and last > 0:
            raise ValueError(FSDP_PRUNING_HELP)
        if self.stats_source == "training" and last == 0:
            raise ValueError(
                "callbacks.pruning.stats_source=training scores on statistics of the training batches before each "
                "event, and the only event is at step 0, before any: set schedule.start_step > 0 (or an iterative "
                "schedule; an event at step 0 falls back to calibration batches), or use stats_source=calibration"
            )
        return events

    def _prune_before_sharding(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Under FSDP: carry out the step-0 event now, on the full model on this rank's device."""
        pl_module.model.to(trainer.strategy.root_device)
        self.on_fit_start(trainer, pl_module)
        for event in self.pending():
            self._prune(trainer, pl_module, event, log_metrics=False)  # self.log is not allowed in setup

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.base is None:
            model = pl_module.model
            self.base = self.evaluator.before_pruning(model) if self.evaluator is not None else model_summary(model)
            log.info("Before pruning: %s", self.base)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.check_reachable(trainer)
        if self.stats_source == "training" and self.pending():
            self._start_recording(pl_module)

    def check_reachable(self, trainer: L.Trainer) -> None:
        """Refuse, before the first step, events that come after training ends: a run bounded by `max_epochs`
        (whose length only the loader gives, so `plan_events` could not check it) would train in full and then
        fail `check_complete`. A stream's length is unknown (infinite here), so no event is late for it."""
        total = trainer.estimated_stepping_batches
        late = [event.step for event in self.pending() if event.step >= total]
        if late:
            raise ValueError(
                f"training ends after {total} optimizer steps (max_epochs={trainer.max_epochs}, "
                f"max_steps={trainer.max_steps}) but pruning events are scheduled at steps {late}: the model would "
                "never be fully pruned. Raise max_epochs or max_steps, or end the schedule earlier"
            )

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        for event in self.pending():
            if event.step > trainer.global_step:
                break
            self._prune(trainer, pl_module, event)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._stop_recording()

    def pending(self) -> list[ScheduledEvent]:
        """The planned events not yet done."""
        return self.planned[len(self.events) :]

    def _prune(
        self, trainer: L.Trainer, pl_module: L.LightningModule, event: ScheduledEvent, log_metrics: bool = True
    ) -> None:
        model = pl_module.model
        removed_so_far = sum(len(done["removed_blocks"]) for done in self.events)
        stats = self._recorder.stats if self._recorder is not None else None
        if stats is not None and not any(layer.tokens for layer in stats.values()):
            stats = None  # no training batch seen since the last event (e.g. an event at step 0)
        needs_batches = self.pruner.needs_calibration and (stats is None or event.blocks > removed_so_far)
        calibration = trainer.datamodule.calibration_batches() if needs_batches else []
        self._stop_recording()
        with trainer.precision_plugin.forward_context():  # calibration passes in the training precision
            result = self.pruner.prune(
                model,
                calibration,
                width=event.width,  # a width the model already has prunes nothing
                num_blocks=event.blocks - removed_so_far,
                stats=stats,
                optimizers=trainer.optimizers,
                reduce=all_reduce_mean if trainer.world_size > 1 else None,
            )
        rewrap_ddp(trainer, pl_module)
        record = {
            "step": trainer.global_step,
            **result.to_dict(),
            "train_loss": _metric(trainer, "train/loss"),
            "tokens_seen": getattr(pl_module, "tokens_seen", None),
            # tokens of training batches the statistics came from (stats_source=training), per layer
            "statistics_tokens": next(iter(stats.values())).tokens if stats else 0,
        }
        if self.evaluator is not None:
            after = model_summary(model, self.evaluator.perplexities(model))
            record.update(
                ppl_after=after["ppl"],
                ppl_after_by_seq_len=after["ppl_by_seq_len"],
                ppl_after_by_domain=after["ppl_by_domain"],
            )
            if log_metrics:
                pl_module.log("prune/ppl_after", record["ppl_after"])
                for name, by_len in after["ppl_by_domain"].items():
                    pl_module.log(f"prune/ppl_after/{name}", next(iter(by_len.values())))
        self.events.append(record)
        self.last_event = result
        if log_metrics:
            pl_module.log("prune/params", result.params / 1e6)
        set_wandb_summary(trainer, "model/params_exact", result.params)
        log.info("Pruning event at step %d: %s", trainer.global_step, record)
        if self.stats_source == "training" and self.pending():
            self._start_recording(pl_module)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._recorder is not None:
            self._recorder.detach()  # validation batches are not training statistics

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._recorder is not None:  # only exists while fitting
            self._recorder.attach()

    def _start_recording(self, pl_module: L.LightningModule) -> None:
        self._recorder = ActivationRecorder(pl_module.model, gram=self.pruner.refit).attach()
        if self._restored_statistics is not None:  # gathered before the interruption this run resumes
            self._recorder.load_state_dict(self._restored_statistics)
            self._restored_statistics = None

    def _stop_recording(self) -> None:
        if self._recorder is not None:
            self._recorder.detach()
            self._recorder = None

    def state_dict(self) -> dict:
        state = {"planned": [e.to_dict() for e in self.planned], "events": self.events, "base": self.base}
        if self._recorder is not None:
            state["statistics"] = self._recorder.state_dict()
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        self.planned = [ScheduledEvent(**e) for e in state_dict["planned"]]
        self.events = list(state_dict["events"])
        self.base = state_dict["base"]
        self._restored_statistics = state_dict.get("statistics")


def _metric(trainer: L.Trainer, name: str) -> float | None:
    value = trainer.callback_metrics.get(name)
    return None if value is None else float(value)
