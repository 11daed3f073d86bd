"""The pruning-cost table: medians over rounds, and each ratio the median of same-round ratios (not a ratio of
medians, which would pair timings from different rounds when the machine drifts)."""

from bench.prune_cost import DEFAULT_RECIPE, OBS, OPTIPFAIR, markdown


def test_ratios_pair_rows_of_the_same_round():
    seconds = {
        OBS: [10.0, 30.0, 20.0],
        OPTIPFAIR: [10.0, 10.0, 40.0],  # per round 1.0, 3.0, 0.5 -> median 1.0; ratio of medians would be 2.0
        DEFAULT_RECIPE: [5.0, 6.0, 7.0],
    }
    text = markdown(seconds, rounds=3)
    assert f"| {OBS} | 20.00 | 10.00-30.00 |" in text
    assert f"| {OBS} / {OPTIPFAIR} | 1.00 |" in text
    assert f"| {DEFAULT_RECIPE} / {OPTIPFAIR} | 0.50 |" in text  # 0.5, 0.6, 0.175
    assert "--rounds" not in text and "--rounds 5" in markdown(seconds, rounds=5)


def test_a_ratio_whose_rows_did_not_run_is_left_out():
    text = markdown({OBS: [1.0]}, rounds=1)  # optipfair not installed: no ratio table
    assert "| ratio (" not in text and f"| {OBS} | 1.00 | 1.00-1.00 |" in text
