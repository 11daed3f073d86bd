"""The shapes pruning deals in: depth settings, the plan a config resolves to on a model, and the record
of one event (an entry of `pruning_report.json` "events")."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from prune_recover.pruning.depth import get_depth_criterion
from prune_recover.settings import check_whole_numbers


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
    calibration_mode: str | None = None
    calibration_tokens: int = 0
    seconds: float = 0.0
    kept: dict = field(default_factory=dict, repr=False)  # layer -> kept neuron indices; not serialized

    def to_dict(self) -> dict:
        return {key: value for key, value in asdict(self).items() if key != "kept"}
