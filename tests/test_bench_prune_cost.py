"""The pruning-cost table: medians over rounds, and each ratio the median of same-round ratios (not a ratio of
medians, which would pair timings from different rounds when the machine drifts)."""

import dataclasses
import sys

import pytest
import torch

from bench import prune_cost
from bench.markdown import machine
from bench.prune_cost import COMMAND, DEFAULT_RECIPE, OBS, OPTIPFAIR, markdown
from prune_recover.pruning import gram
from prune_recover.pruning.calibration import NeuronStats
from prune_recover.pruning.gram import GRAM_PANEL
from prune_recover.pruning.pruner import Pruner


def test_ratios_pair_rows_of_the_same_round():
    seconds = {
        OBS: [10.0, 30.0, 20.0],
        OPTIPFAIR: [10.0, 10.0, 40.0],  # per round 1.0, 3.0, 0.5 -> median 1.0; ratio of medians would be 2.0
        DEFAULT_RECIPE: [5.0, 6.0, 7.0],
    }
    text = markdown(seconds, COMMAND)
    assert f"| {OBS} | 20.00 | 10.00-30.00 |" in text
    assert f"| {OBS} / {OPTIPFAIR} | 1.00 |" in text
    assert f"| {DEFAULT_RECIPE} / {OPTIPFAIR} | 0.50 |" in text  # 0.5, 0.6, 0.175
    assert "each of 3 rounds" in text


def test_the_printed_command_names_the_options_the_run_was_given(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["prune_cost.py", "--rounds", "5", "--only", "default", "optipfair"])
    args = prune_cost.parse_args()
    assert prune_cost.command(args) == f"{COMMAND} --rounds 5 --only default optipfair"
    monkeypatch.setattr(sys, "argv", ["prune_cost.py", "--section", "prune_cost_avx2"])
    assert prune_cost.command(prune_cost.parse_args()) == f"{COMMAND} --section prune_cost_avx2"
    monkeypatch.setattr(sys, "argv", ["prune_cost.py", "--section", "prune_cost_h200", "--model", "/models/random"])
    assert prune_cost.command(prune_cost.parse_args()) == f"{COMMAND} --section prune_cost_h200 --model /models/random"


def test_the_title_names_the_model_the_rows_pruned():
    assert markdown({OBS: [1.0]}, COMMAND).startswith("## Pruning cost on SmolLM2-135M (40% of MLP neurons)")
    assert markdown({OBS: [1.0]}, COMMAND, "`/models/random`").startswith("## Pruning cost on `/models/random` (40%")


def test_naming_optipfairs_rows_without_it_stops_before_the_model_loads(monkeypatch):
    monkeypatch.setitem(sys.modules, "optipfair", None)  # `import optipfair` raises ImportError, as when absent
    monkeypatch.setattr(prune_cost, "load_model", lambda *a: pytest.fail("the model was loaded"))
    monkeypatch.setattr(sys, "argv", ["prune_cost.py", "--only", "default", "optipfair"])
    with pytest.raises(SystemExit, match="--only names optipfair's rows, which need it installed"):
        prune_cost.main()


def test_a_model_name_that_loads_nothing_stops_before_any_row(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["prune_cost.py", "--only", "forward", "--model", "no-such-model"])
    with pytest.raises(SystemExit, match="--model: Unknown model 'no-such-model'"):
        prune_cost.main()
    monkeypatch.setattr(sys, "argv", ["prune_cost.py", "--only", "forward", "--model", "./missing-dir"])
    with pytest.raises(SystemExit, match="--model: Model path not found"):
        prune_cost.main()


def test_the_machine_line_names_the_cpu_and_its_bfloat16_instructions(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Platinum 8481C\nflags\t\t: avx2 amx_bf16\n")
    line = machine(cpuinfo)
    assert line.startswith("CPU (Intel(R) Xeon(R) Platinum 8481C, ") and "threads, bfloat16 instructions)" in line
    cpuinfo.write_text("flags\t\t: avx2 fma\n")
    line = machine(cpuinfo)
    assert line.startswith("CPU (unknown model, ") and "threads, no bfloat16 instructions)" in line


def test_the_machine_line_names_the_device_the_rows_ran_on(tmp_path, monkeypatch):
    # on a machine with a GPU, rows run on its CPU are labelled with the CPU, and only rows run on the GPU with the GPU
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H200")
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("model name\t: AMD EPYC\nflags\t\t: avx2 avx512_bf16\n")
    assert machine(cpuinfo).startswith("CPU (AMD EPYC, ")
    assert machine(cpuinfo, device="cuda").startswith("NVIDIA H200, torch ")


def test_a_ratio_whose_rows_did_not_run_is_left_out():
    text = markdown({OBS: [1.0]}, COMMAND)  # optipfair not installed: no ratio table
    assert "| ratio (" not in text and f"| {OBS} | 1.00 | 1.00-1.00 |" in text


def test_the_one_product_row_computes_the_gram_as_the_full_product_and_restores_the_panels():
    x = torch.randn(64, 2 * GRAM_PANEL + 8, generator=torch.Generator().manual_seed(0))
    one, panels = (NeuronStats.zeros(x.shape[1], x.device, gram=True) for _ in range(2))
    with prune_cost.gram_panels(prune_cost.ONE_PANEL):
        one.add(x)
    panels.add(x)
    assert torch.equal(one.gram, (x.T @ x).double()) and gram.GRAM_PANEL == GRAM_PANEL
    torch.testing.assert_close(panels.gram, one.gram, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("key", sorted(prune_cost.CASES))
def test_every_rows_settings_are_a_valid_pruner(key):
    """A row whose settings the Pruner refuses would stop the run only when its turn comes, hours in."""
    _, settings, _ = prune_cost.CASES[key]
    Pruner(ratio=0.4, **settings)


def test_the_reconstruction_rows_are_the_documented_reconstruction():
    """bench/layer_reconstruction.py's quality figures and these costs must be of one setting."""
    pruner = Pruner(ratio=0.4, **prune_cost.CASES["reconstruct"][1])
    assert pruner.calibration_mode == "sequential" and pruner.scorer.name == "activation" and pruner.refit
    assert (pruner.reconstruct.epochs, pruner.reconstruct.lr, pruner.reconstruct.target) == (6, 2e-3, "carried")
    assert not pruner.reconstruct.normalized and pruner.reconstruct.batch_tokens == 1024
    assert pruner.reconstruct.precision == "float32"
    bfloat16 = Pruner(ratio=0.4, **prune_cost.CASES["reconstruct-bf16"][1]).reconstruct
    assert bfloat16 == dataclasses.replace(pruner.reconstruct, precision="bfloat16")
    # the recipe row is the bf16 row with the step in the default job's precision (layer_reconstruction_bf16_bf16pass)
    _, recipe, pass_precision = prune_cost.CASES["reconstruct-recipe"]
    assert recipe == prune_cost.CASES["reconstruct-bf16"][1] and pass_precision == prune_cost.RECIPE_PRECISION
