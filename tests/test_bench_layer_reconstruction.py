"""bench/layer_reconstruction.py: its flags become the package's `pruning.reconstruct` settings, bad ones stop before
any model loads, and its table carries both perplexities, the zero-shot suite and the fit's errors."""

from types import SimpleNamespace

import pytest

from bench.layer_reconstruction import default_section, markdown, parse_args, seq_len
from prune_recover.evaluation.tasks import ZEROSHOT_TASKS
from prune_recover.pruning.spec import PruneEvent
from tests.evaluation.test_tasks import ZEROSHOT_DIR


def test_the_flags_are_the_packages_reconstruction_settings():
    argv = [
        "--selection",
        "obs",
        "--calibration-mode",
        "layerwise",
        "--target",
        "local",
        "--epochs",
        "3",
        "--lr",
        "1e-3",
        "--batch-tokens",
        "512",
        "--normalized",
        "--precision",
        "bfloat16",
        "--calibration-precision",
        "bfloat16",
        "--windows",
        "128",
        "--tokens",
        "65536",
        "--seed",
        "2",
        "--zeroshot-dir",
    ]
    args, pruner, evaluator = parse_args([*argv, str(ZEROSHOT_DIR)])
    assert (pruner.scorer.name, pruner.calibration_mode, pruner.target.ratio) == ("obs", "layerwise", 0.4)
    settings = pruner.reconstruct
    assert (settings.epochs, settings.lr, settings.batch_tokens, settings.target) == (3, 1e-3, 512, "local")
    assert settings.normalized and settings.precision == "bfloat16"
    assert default_section(args) == "layer_reconstruction_obs_layerwise_normalized_bf16_bf16pass_w128_t65536_seed2"
    assert (args.windows, seq_len(args)) == (128, 512)
    assert seq_len(parse_args(["--windows", "128", "--zeroshot-dir", str(ZEROSHOT_DIR)])[0]) == 256
    assert evaluator.limit == args.zero_shot == 100


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--ratio", "1.5"], r"bad flag: pruning.ratio must be in \(0, 1\)"),
        (["--epochs", "-1"], "bad flag: pruning.reconstruct.epochs takes a whole number >= 0"),
        (["--lr", "0"], "bad flag: pruning.reconstruct.lr must be a finite positive number"),
        (["--batch-tokens", "0"], "bad flag: pruning.reconstruct.batch_tokens takes a whole number >= 1"),
        (["--zero-shot", "0"], "--zero-shot: a positive number of items per task, got 0"),
        (["--windows", "100"], "bad flag: --windows must divide 32,768 calibration tokens, got 100"),
        (["--windows", "0"], "bad flag: --windows must divide 32,768 calibration tokens, got 0"),
        (["--tokens", "0"], "bad flag: --tokens takes a whole number >= 1, got 0"),
        (
            ["--tokens", "65536", "--windows", "100"],
            "bad flag: --windows must divide 65,536 calibration tokens, got 100",
        ),
    ],
)
def test_bad_flags_stop_before_any_model_loads(argv, message):
    with pytest.raises(SystemExit, match=message):
        parse_args([*argv, "--zeroshot-dir", str(ZEROSHOT_DIR)])


def test_a_calibration_mode_without_layer_inputs_is_refused(capsys):
    """One-shot statistics give no layer inputs to fit on: argparse stops at the flag."""
    with pytest.raises(SystemExit):
        parse_args(["--calibration-mode", "oneshot", "--zeroshot-dir", str(ZEROSHOT_DIR)])
    assert "argument --calibration-mode: invalid choice: 'oneshot'" in capsys.readouterr().err


def test_the_table_has_both_perplexities_the_suite_and_the_fits_errors():
    args = SimpleNamespace(
        selection="activation",
        calibration_mode="sequential",
        ratio=0.4,
        target="carried",
        epochs=6,
        lr=2e-3,
        batch_tokens=1024,
        normalized=False,
        precision="float32",
        calibration_precision="float32",
        zero_shot=100,
        windows=64,
        tokens=32768,
        seed=0,
    )
    event = PruneEvent("activation", 922, 30, 0, reconstructed={0: (0.4, 0.3), 1: (0.2, 0.1)})
    scores = {task: {metric: 0.5, f"{metric}_stderr": 0.05} for task, (_, metric) in ZEROSHOT_TASKS.items()}
    suite = {"average": 0.417, "tasks": scores}
    command = "python bench/layer_reconstruction.py --target carried"

    table = markdown(command, args, event, {"wikitext2": 34.98, "code": 35.91}, suite, 1104.4)

    assert table.startswith("## Per-layer reconstruction after activation + refit at 40% (`pruning.reconstruct`")
    assert f"Command: `{command}`." in table and "MLP width 1536 -> 922" in table
    assert "one-shot, 64 x 512 calibration tokens from `wiki.valid.raw` (seed 0)" in table
    assert "6 epochs of Adam at 0.002 in batches of 1024 tokens. WikiText-2 test" in table
    args.normalized = True
    normalized = markdown(command, args, event, {"wikitext2": 34.98, "code": 35.91}, suite, 1104.4)
    assert "at 40% (`pruning.reconstruct`, normalized loss, issue 12)\n" in normalized
    assert "1024 tokens, each token's error over its block output's squared norm (`normalized`)." in normalized
    assert "0.3000 after the refit, 0.2000 after the reconstruction" in table
    args.windows, args.seed = 128, 1
    assert "one-shot, 128 x 256 calibration tokens from `wiki.valid.raw` (seed 1)," in markdown(
        command, args, event, {"wikitext2": 1, "code": 1}, suite, 1
    )
    cells = " | ".join(["0.500 ± 0.050"] * len(ZEROSHOT_TASKS))
    assert table.endswith(f"| 34.98 | 35.91 | {cells} | 0.417 | 1104 |")
