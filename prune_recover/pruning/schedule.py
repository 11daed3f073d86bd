"""When to prune and how far: training step -> (MLP width, blocks removed so far).

- `oneshot`: one event at `start_step` (0 = before the first optimizer step) reaching the target.
- `linear` / `cubic`: `num_events` events evenly spaced from `start_step` to `end_step`; after
  event k of n the pruned fraction of the way is f((k + 1) / n) with f(p) = p (linear) or
  f(p) = 1 - (1 - p)^3 (cubic, Zhu & Gupta 2017: prune fast while redundancy is high, gently
  near the target). The last event always lands exactly on the target.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from prune_recover.pruning.targets import round_to_multiple
from prune_recover.settings import check_whole_numbers

KINDS = ("oneshot", "linear", "cubic")


@dataclass(frozen=True)
class ScheduledEvent:
    """One planned pruning event.

    Attributes:
        step: Global step before which the event happens.
        width: MLP width after the event.
        blocks: Total decoder blocks removed after the event (cumulative).
    """

    step: int
    width: int
    blocks: int

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class PruningSchedule:
    """Settings of `callbacks.pruning.schedule`.

    Attributes:
        kind: `oneshot`, `linear` or `cubic`.
        start_step: Step of the first event.
        end_step: Step of the last event (iterative kinds).
        num_events: Number of events (iterative kinds; at least 2).
    """

    kind: str = "oneshot"
    start_step: int = 0
    end_step: int = 0
    num_events: int = 1

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"schedule kind must be one of {KINDS}, got '{self.kind}'")
        check_whole_numbers(
            {
                "schedule.start_step": (self.start_step, 0),
                "schedule.end_step": (self.end_step, 0),
                "schedule.num_events": (self.num_events, 1),
            }
        )
        if self.kind != "oneshot":
            if self.num_events < 2:
                raise ValueError(f"a {self.kind} schedule needs num_events >= 2, got {self.num_events}")
            if self.end_step - self.start_step < self.num_events - 1:
                raise ValueError(
                    f"a {self.kind} schedule needs end_step - start_step >= num_events - 1 to give each event its "
                    f"own step, got start_step={self.start_step}, end_step={self.end_step}, "
                    f"num_events={self.num_events}"
                )

    def fraction(self, progress: float) -> float:
        """Fraction of the way to the target after `progress` in (0, 1] of the events."""
        return progress if self.kind == "linear" else 1 - (1 - progress) ** 3

    def events(
        self, initial_width: int, final_width: int, total_blocks: int, round_to: int = 1
    ) -> list[ScheduledEvent]:
        """The planned events, widths rounded to `round_to`, never widening, last one exactly on target."""
        if self.kind == "oneshot":
            return [ScheduledEvent(self.start_step, final_width, total_blocks)]
        span = self.end_step - self.start_step
        events = []
        width = initial_width
        for k in range(self.num_events):
            step = self.start_step + round(k * span / (self.num_events - 1))
            share = self.fraction((k + 1) / self.num_events)
            if k == self.num_events - 1:
                width, blocks = final_width, total_blocks
            else:
                wanted = initial_width - share * (initial_width - final_width)
                width = min(width, max(final_width, round_to_multiple(wanted, round_to)))
                blocks = round(share * total_blocks)
            events.append(ScheduledEvent(step, width, blocks))
        return events
