"""The command line: configs compose, the prune-only job writes its outputs, bad input fails early."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir
from transformers import AutoModelForCausalLM, AutoTokenizer

from prune_recover.evaluation.evaluator import Evaluator
from train import run

REPO = Path(__file__).resolve().parents[1]
RECIPES = sorted(p.stem for p in (REPO / "configs" / "recipe").glob("*.yaml"))


def tiny_overrides(wikitext_dir, output_dir) -> list[str]:
    """Shrink any config to the tiny random model and a few hundred tokens."""
    return [
        "model=tiny_random",
        "model.name=tiny-random",
        "model.dtype=float32",
        "data=wikitext2",
        "eval=default",
        "recovery=full",
        "trainer=cpu",
        "trainer.precision=32-true",
        "trainer.accumulate_grad_batches=1",
        f"data.wikitext_dir={wikitext_dir}",
        "data.calibration.num_samples=4",
        "data.calibration.seq_len=64",
        "eval.seq_lens=[64,128]",
        "eval.max_windows=3",
        "pruning.depth.num_samples=2",
        "pruning.depth.seq_len=32",
        "data.block_size=64",
        "data.max_val_blocks=4",
        "trainer.max_steps=4",
        "trainer.val_check_interval=2",
        "callbacks.checkpoint.every_n_train_steps=2",
        f"output_dir={output_dir}",
    ]


def compose_config(overrides: list[str]):
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


def test_prune_only_job_writes_a_reloadable_model_and_a_complete_report(wikitext_dir, tmp_path):
    out = tmp_path / "run"
    overrides = ["recovery=none", "pruning.depth.num_blocks=1", "pruning.round_to=8"]
    cfg = compose_config(tiny_overrides(wikitext_dir, out) + overrides)
    report = run(cfg)

    saved = json.loads((out / "pruning_report.json").read_text())
    assert saved["final"] == report["final"]
    for section in ("base", "final"):
        assert {"params", "intermediate_size", "num_layers", "ppl"} <= set(saved[section])
    assert saved["base"] == {**saved["base"], "intermediate_size": 128, "num_layers": 4}
    assert (saved["final"]["intermediate_size"], saved["final"]["num_layers"]) == (80, 3)  # 76.8 -> 80
    event = saved["events"][0]
    assert {"step", "importance", "intermediate_size", "num_layers", "params", "ppl_after"} <= set(event)
    assert event["importance"] == "activation" and len(event["removed_blocks"]) == 1
    assert [p["seq_len"] for p in saved["protocol"]["protocols"]] == [64, 128]

    model = AutoModelForCausalLM.from_pretrained(out / "final")
    tokenizer = AutoTokenizer.from_pretrained(out / "final")
    assert sum(p.numel() for p in model.parameters()) == saved["final"]["params"]
    text = (Path(wikitext_dir) / "wiki.test.raw").read_text(encoding="utf-8")
    ids = torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"])
    reloaded_ppl = Evaluator({"test": ids}, seq_lens=[64, 128], max_windows=3)(model)
    assert reloaded_ppl[64] == pytest.approx(saved["final"]["ppl"], rel=1e-5)


def test_a_prune_only_job_with_per_layer_reconstruction_reports_the_fit(wikitext_dir, tmp_path):
    out = tmp_path / "run"
    fit = ["pruning.reconstruct.epochs=2", "pruning.reconstruct.lr=3e-4", "pruning.reconstruct.batch_tokens=32"]
    overrides = ["recovery=none", "pruning.calibration_mode=sequential", "pruning.reconstruct.precision=bfloat16", *fit]
    run(compose_config(tiny_overrides(wikitext_dir, out) + overrides))

    event = json.loads((out / "pruning_report.json").read_text())["events"][0]
    assert event["calibration_mode"] == "sequential" and event["reconstruct_epochs"] == 2
    assert event["reconstruct_precision"] == "bfloat16"
    before, after = event["reconstruct_error"]
    assert after < before
    assert AutoModelForCausalLM.from_pretrained(out / "final").config.intermediate_size == 77


@pytest.mark.parametrize(
    "overrides, error, message",
    [
        (["pruning.ratio=1.5"], ValueError, r"ratio must be in \(0, 1\)"),
        (["pruning.importance=magnitude"], ValueError, "Unknown importance scorer 'magnitude'"),
        (["model.name=llama-9000"], ValueError, "Unknown model 'llama-9000'"),
        (["pruning.ratio=null", "pruning.target_params=1000"], ValueError, "smallest reachable count"),
        (["pruning.expansion_ratio=3"], ValueError, "set exactly one"),
        (["data.wikitext_dir=/nonexistent"], FileNotFoundError, "WikiText-2 train file not found"),
        (["pruning.depth.num_blocks=9"], ValueError, r"cannot remove 9 of 4 blocks \(pruning.depth.num_blocks\)"),
        (["recovery.method=magic"], ValueError, "recovery.method must be one of"),
        (["pruning.reconstruct.epochs=2"], ValueError, "reconstruct .* got calibration_mode=oneshot"),
        (["pruning.reconstruct.target=global"], ValueError, "reconstruct.target must be one of"),
        (["pruning.reconstruct.precision=float16"], ValueError, "reconstruct.precision must be one of"),
    ],
)
def test_bad_input_fails_before_any_output_is_written(wikitext_dir, tmp_path, overrides, error, message):
    out = tmp_path / "run"
    cfg = compose_config(tiny_overrides(wikitext_dir, out) + overrides)
    with pytest.raises(error, match=message):
        run(cfg)
    assert not (out / "final").exists() and not (out / "pruning_report.json").exists()


def test_non_glu_model_is_rejected_from_the_command_line(wikitext_dir, tmp_path):
    from transformers import GPT2Config

    from prune_recover.arch import UnsupportedModelError

    GPT2Config(n_layer=2, n_embd=32, n_head=2).save_pretrained(tmp_path / "gpt2")
    cfg = compose_config(tiny_overrides(wikitext_dir, tmp_path / "run") + [f"model.name={tmp_path / 'gpt2'}"])
    with pytest.raises(UnsupportedModelError, match="Supported families"):
        run(cfg)


@pytest.mark.parametrize("recipe", RECIPES)
def test_every_recipe_validates_at_its_checkpoint_steps(recipe):
    recipe_file = yaml.safe_load((REPO / "configs" / "recipe" / f"{recipe}.yaml").read_text())
    every = (recipe_file.get("callbacks") or {}).get("checkpoint", {}).get("every_n_train_steps")
    trainer = recipe_file.get("trainer") or {}
    accumulate, interval = trainer.get("accumulate_grad_batches", 1), trainer.get("val_check_interval")
    if every is not None and interval is not None:  # Lightning counts the interval in micro-batches
        assert interval == every * accumulate, f"validates every {interval / accumulate} optimizer steps, not {every}"


@pytest.mark.parametrize("recipe", RECIPES)
def test_every_recipe_composes_and_runs_on_the_tiny_model(recipe, wikitext_dir, tmp_path):
    overrides = [f"recipe={recipe}"] + tiny_overrides(wikitext_dir, tmp_path / recipe) + ["logger=csv"]
    if compose_config(overrides).pruning.target_params:  # an 8B target means nothing for a 181k-parameter model
        overrides += ["pruning.target_params=150000", "pruning.round_to=8"]
    cfg = compose_config(overrides)
    report = run(cfg)
    assert report["final"]["params"] < report["base"]["params"]
    assert report["recipe"] == cfg.recipe_name != "default"
    assert f"python train.py recipe={recipe}" in (REPO / "configs" / "recipe" / f"{recipe}.yaml").read_text()


def test_recovery_job_reports_events_and_final_validation(wikitext_dir, tmp_path):
    out = tmp_path / "recover"
    overrides = ["schedule=cubic", "schedule.start_step=0", "schedule.end_step=2", "schedule.num_events=3"]
    report = run(compose_config(tiny_overrides(wikitext_dir, out) + overrides + ["trainer.max_steps=5"]))
    saved = json.loads((out / "pruning_report.json").read_text())
    assert saved["final"] == report["final"] and saved["final"]["intermediate_size"] == 77
    assert [e["step"] for e in saved["events"]] == [0, 1, 2]
    for event in saved["events"]:
        assert {
            "step",
            "importance",
            "intermediate_size",
            "num_layers",
            "params",
            "ppl_after",
            "train_loss",
            "tokens_seen",
        } <= set(event)
    assert saved["events"][1]["tokens_seen"] == 4 * 64 and saved["events"][1]["train_loss"] > 0
    assert saved["final"]["val_ppl"] > 1 and saved["recovery"] == {**saved["recovery"], "steps": 5, "method": "full"}
    assert saved["history"][-1]["step"] == 4  # no validation at step 5: the final val_ppl was measured afterwards
    assert (out / "checkpoints" / "last.ckpt").is_file()
    assert any((out / "wandb").glob("offline-run-*")), "W&B logged offline under output_dir"
    reloaded = AutoModelForCausalLM.from_pretrained(out / "final")
    assert reloaded.config.intermediate_size == 77


def test_the_real_entry_point_runs_under_hydra(wikitext_dir, tmp_path):
    out = tmp_path / "cli"
    result = subprocess.run(
        [sys.executable, "train.py", *tiny_overrides(wikitext_dir, out), "pruning.importance=maw", "recovery=lora"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (record,) = (out / ".hydra").glob("*/config.yaml")
    assert (out / "final" / "config.json").is_file() and "importance: maw" in record.read_text()
    report = json.loads((out / "pruning_report.json").read_text())
    assert report["events"][0]["importance"] == "maw" and report["recovery"]["method"] == "lora"
    refused = subprocess.run(
        [sys.executable, "train.py", *tiny_overrides(wikitext_dir, out), "pruning.importance=wanda"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert refused.returncode == 1 and "holds an earlier run" in refused.stderr
    assert "importance: maw" in record.read_text()  # the run's own record, not the refused invocation's


def test_a_validation_at_the_last_step_is_the_final_val_ppl_without_measuring_it_again():
    from prune_recover.jobs.prune_and_recover import final_val_ppl

    history = [{"step": 40, "val_ppl": 35.4}, {"step": 80, "val_ppl": 33.9}]
    assert final_val_ppl(None, None, history, step=80) == 33.9  # no model, no data: nothing is run
