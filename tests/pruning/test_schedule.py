import pytest

from prune_recover.pruning.schedule import PruningSchedule


def test_oneshot_is_a_single_event_on_target():
    events = PruningSchedule().events(1536, 922, 2)
    assert [(e.step, e.width, e.blocks) for e in events] == [(0, 922, 2)]


def test_cubic_front_loads_and_lands_exactly_on_target():
    events = PruningSchedule("cubic", start_step=10, end_step=30, num_events=3).events(1536, 922, 3, round_to=8)
    assert [e.step for e in events] == [10, 20, 30]
    removed = [1536 - e.width for e in events]
    assert removed[0] > 0.65 * 614 and removed[-1] == 614 and removed == sorted(removed)
    assert all(e.width % 8 == 0 for e in events[:-1]) and events[-1].width == 922
    assert [e.blocks for e in events] == [2, 3, 3]


def test_linear_spacing_and_never_widening():
    events = PruningSchedule("linear", start_step=0, end_step=9, num_events=4).events(100, 60, 0, round_to=16)
    assert [e.step for e in events] == [0, 3, 6, 9]
    widths = [e.width for e in events]
    assert widths == sorted(widths, reverse=True) and widths[-1] == 60


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"kind": "exponential"}, "kind must be one of"),
        ({"kind": "cubic", "num_events": 1}, "needs num_events >= 2"),
        ({"kind": "linear", "num_events": 5, "end_step": 3}, "end_step - start_step >= num_events - 1"),
        ({"start_step": -1}, "schedule.start_step takes a whole number >= 0, got -1"),
        ({"kind": "linear", "end_step": True}, "schedule.end_step takes a whole number >= 0, got True"),
        ({"end_step": -1}, "schedule.end_step takes a whole number >= 0, got -1"),  # a oneshot took it
        ({"num_events": 0}, "schedule.num_events takes a whole number >= 1, got 0"),
    ],
)
def test_bad_schedules(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PruningSchedule(**kwargs)
