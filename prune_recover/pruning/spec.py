"""The shapes pruning deals in: depth settings, the plan a config resolves to on a model, and the record
of one event (an entry of `pruning_report.json` "events")."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from prune_recover.pruning.depth import get_depth_criterion
from prune_recover.pruning.reconstruct import ReconstructSpec
from prune_recover.settings import check_non_negative, check_whole_numbers


@dataclass(frozen=True)
class DepthSpec:
    """Depth pruning settings (`pruning.depth`).

    Attributes:
        num_blocks: Decoder blocks to remove; 0 disables depth pruning.
        criterion: `ppl`, `taylor_plus` or `angular` (see `depth.py`).
        protect_first: Blocks at the start never removed; None takes the criterion's default (4 for taylor_plus).
        protect_last: Blocks at the end never removed; None takes the criterion's default (2 for taylor_plus).
        num_samples: Calibration samples the block scores use (the first ones of the calibration set);
            the `ppl` criterion re-runs them once per block, so they are fewer and shorter than for width.
        seq_len: Tokens kept from the start of each of those samples.
    """

    num_blocks: int = 0
    criterion: str = "ppl"
    protect_first: int | None = None
    protect_last: int | None = None
    num_samples: int = 16
    seq_len: int = 128

    def __post_init__(self) -> None:
        protected = {
            f"pruning.depth.{name} (or null)": (getattr(self, name), 0)
            for name in ("protect_first", "protect_last")
            if getattr(self, name) is not None
        }
        check_whole_numbers(
            {
                "pruning.depth.num_blocks": (self.num_blocks, 0),
                "pruning.depth.num_samples": (self.num_samples, 1),
                "pruning.depth.seq_len": (self.seq_len, 2),
                **protected,
            }
        )
        criterion = get_depth_criterion(self.criterion)
        if self.protect_first is None:
            object.__setattr__(self, "protect_first", criterion.protect_first)
        if self.protect_last is None:
            object.__setattr__(self, "protect_last", criterion.protect_last)


def as_spec(spec_class: type, value):
    """`value` if it is already a `spec_class`, else a `spec_class` built from its mapping (None: the defaults)."""
    return value if isinstance(value, spec_class) else spec_class(**(value or {}))


CALIBRATION_MODES = ("oneshot", "layerwise", "sequential", "carried")


def refuse_prior_stats(mode: str, reconstruct: ReconstructSpec) -> None:
    """Refuse statistics gathered beforehand (`callbacks.pruning.stats_source=training`) where width pruning must
    run the calibration batches through the model itself, layer by layer."""
    if mode in ("sequential", "carried") or reconstruct.enabled:
        setting = "pruning.reconstruct" if reconstruct.enabled else f"pruning.calibration_mode={mode}"
        raise ValueError(
            f"{setting} runs each layer on the calibration batches as the already-pruned layers below it leave them; "
            "callbacks.pruning.stats_source=training records statistics beforehand. Use stats_source=calibration, or "
            "calibration_mode oneshot / layerwise without pruning.reconstruct"
        )


def check_calibration(mode: str, refit: bool, refit_damp, prunes_width: bool, reconstruct: ReconstructSpec) -> None:
    """Refuse calibration settings that cannot work together, before any model loads."""
    if mode not in CALIBRATION_MODES:
        raise ValueError(f"pruning.calibration_mode must be one of {CALIBRATION_MODES}, got '{mode}'")
    if mode == "carried" and not (refit and prunes_width):
        raise ValueError(
            "pruning.calibration_mode=carried refits each layer to the unpruned model's output: "
            "it needs width pruning with pruning.refit=true"
        )
    check_non_negative("pruning.refit_damp", refit_damp)
    if reconstruct.enabled and (mode == "oneshot" or not prunes_width):
        raise ValueError(
            "pruning.reconstruct fits each width-pruned layer on its own calibration inputs, one layer at a time: it "
            f"needs width pruning and calibration_mode layerwise, sequential or carried, got calibration_mode={mode}"
        )


@dataclass(frozen=True)
class PrunePlan:
    """The final shape a pruning config asks for on a given model."""

    intermediate_size: int
    num_layers: int
    params: int


@dataclass
class PruneEvent:
    """What one call of `Pruner.prune` did (one entry of `pruning_report.json` "events")."""

    importance: str
    intermediate_size: int
    num_layers: int
    params: int
    removed_blocks: list[int] = field(default_factory=list)
    depth_criterion: str | None = None
    refit: bool = False
    reconstruct_epochs: int = 0
    reconstruct_normalized: bool = False  # reconstruct_error then weighs each token by its relative error
    reconstruct_precision: str | None = None  # of the fit's Adam steps (`pruning.reconstruct.precision`)
    obs_shrink: float | None = None  # importance=obs: the Gram's shrink toward its diagonal that the choice used
    calibration_mode: str | None = None
    calibration_tokens: int = 0
    seconds: float = 0.0
    reconstruct_error: list[float] | None = None  # mean over layers of the relative error before / after the fit
    kept: dict = field(default_factory=dict, repr=False)  # layer -> kept neuron indices; not serialized
    reconstructed: dict = field(default_factory=dict, repr=False)  # layer -> (error before, after); not serialized

    def __post_init__(self) -> None:
        if self.reconstructed and self.reconstruct_error is None:
            pairs = list(self.reconstructed.values())
            self.reconstruct_error = [sum(pair[i] for pair in pairs) / len(pairs) for i in (0, 1)]

    def to_dict(self) -> dict:
        return {key: value for key, value in asdict(self).items() if key not in ("kept", "reconstructed")}
