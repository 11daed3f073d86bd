"""Refusals before the model loads, and runs that did not do what was asked failing instead of exporting."""

import json
import os

import pytest
import torch
import wandb

from prune_recover.jobs.preflight import SETTINGS_FILE, check_resume_settings
from tests.test_train_cli import compose_config, tiny_overrides
from train import run

PRUNE_ONLY = ["recovery=none"]


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["output_dir="], "output_dir is empty"),
        (["pruning.importance=taylor", "callbacks.pruning.stats_source=training"], "taylor needs gradients"),
        (
            ["pruning.calibration_mode=sequential", "callbacks.pruning.stats_source=training"],
            "calibration_mode=sequential runs each layer on the calibration batches as the already-pruned layers",
        ),
        (
            [
                "pruning.calibration_mode=layerwise",
                "pruning.reconstruct.epochs=1",
                "callbacks.pruning.stats_source=training",
            ],
            "pruning.reconstruct runs each layer on the calibration batches",
        ),
        (["recovery=cpt_then_lora", "recovery.module.lora_from_step=4"], "would never start"),
        (["overwrite=no"], "overwrite must be true or false, got 'no'"),  # a string was taken as true
        (["recovery=none", "ckpt_path=last"], "recovery=none trains nothing: drop ckpt_path"),
    ],
)
def test_settings_that_cannot_work_are_refused_before_anything_is_written(wikitext_dir, tmp_path, overrides, message):
    out = tmp_path / "run"
    with pytest.raises(ValueError, match=message):
        run(compose_config(tiny_overrides(wikitext_dir, out) + overrides))
    assert not out.exists() or not any(out.iterdir())


def test_a_used_output_dir_is_refused_unless_overwrite_moves_the_old_run_aside(wikitext_dir, tmp_path):
    out = tmp_path / "run"
    run(compose_config(tiny_overrides(wikitext_dir, out) + PRUNE_ONLY))
    first_report = (out / "pruning_report.json").read_text()

    with pytest.raises(FileExistsError, match="holds an earlier run .*final.*overwrite=true"):
        run(compose_config(tiny_overrides(wikitext_dir, out) + PRUNE_ONLY))
    assert (out / "pruning_report.json").read_text() == first_report  # untouched

    run(compose_config(tiny_overrides(wikitext_dir, out) + PRUNE_ONLY + ["overwrite=true"]))
    (aside,) = out.glob("replaced-*")
    assert (aside / "pruning_report.json").read_text() == first_report and (aside / "final").is_dir()
    assert (out / "final" / "config.json").is_file()


def test_resuming_under_other_settings_is_refused_and_names_them(wikitext_dir, tmp_path):
    out = tmp_path / "run"
    run(compose_config(tiny_overrides(wikitext_dir, out)))
    settings = json.loads((out / "run_settings.json").read_text())
    assert settings["pruning"]["ratio"] == 0.4 and settings["model.name"] == "tiny-random"
    report = (out / "pruning_report.json").read_text()

    resumed = tiny_overrides(wikitext_dir, out) + ["ckpt_path=last", "pruning.ratio=0.5", "trainer.max_steps=6"]
    with pytest.raises(ValueError, match=r"other settings.*: pruning.ratio: 0.4 then, 0.5 now\. Resume with"):
        run(compose_config(resumed))
    # the checkpoint of that run, resumed into another folder, is checked against the settings of its own run
    elsewhere = tiny_overrides(wikitext_dir, tmp_path / "other") + ["pruning.ratio=0.5", "trainer.max_steps=6"]
    foreign = [f"ckpt_path={out / 'checkpoints' / 'last.ckpt'}"]
    with pytest.raises(ValueError, match=r"the run in .*run was started with other settings"):
        run(compose_config(elsewhere + foreign))  # was resumed, reporting 0.5 for a model pruned at 0.4
    (out / SETTINGS_FILE).rename(tmp_path / "saved_settings.json")
    with pytest.raises(FileNotFoundError, match="cannot check what the checkpoint of .*run holds"):
        run(compose_config(elsewhere + foreign))
    (tmp_path / "saved_settings.json").rename(out / SETTINGS_FILE)
    # overwrite=true moves the earlier run aside only once every check has passed
    failing = tiny_overrides(wikitext_dir, out) + ["overwrite=true", f"+eval.texts.code={tmp_path / 'missing.py'}"]
    with pytest.raises(FileNotFoundError, match="eval.texts.code"):
        run(compose_config(failing))
    assert (out / "pruning_report.json").read_text() == report and not list(out.glob("replaced-*"))


def test_nothing_to_resume_is_refused_before_anything_loads(wikitext_dir, tmp_path, monkeypatch):
    out = tmp_path / "run"
    with pytest.raises(FileNotFoundError, match="ckpt_path=last, but .*last.ckpt does not exist"):
        run(compose_config(tiny_overrides(wikitext_dir, out) + ["ckpt_path=last"]))  # trained from scratch before
    with pytest.raises(FileNotFoundError, match="ckpt_path=.*nowhere.ckpt does not exist"):
        run(compose_config(tiny_overrides(wikitext_dir, out) + [f"ckpt_path={tmp_path / 'nowhere.ckpt'}"]))
    for name in [key for key in os.environ if key.startswith("SLURM_")]:
        monkeypatch.delenv(name)
    out.mkdir()
    (out / "hpc_ckpt_1.ckpt").write_bytes(b"a requeue's checkpoint")  # Lightning takes it only under SLURM
    with pytest.raises(FileExistsError, match="holds an earlier run"):
        run(compose_config(tiny_overrides(wikitext_dir, out)))  # was counted as a resume, then trained from scratch


def test_a_setting_the_resumed_run_did_not_record_is_not_compared(tmp_path):
    now = {"model.name": "tiny-random", "data.bos": "auto"}
    (tmp_path / SETTINGS_FILE).write_text(json.dumps({"model.name": "tiny-random"}))  # a run from before data.bos
    check_resume_settings(tmp_path, now)
    (tmp_path / SETTINGS_FILE).write_text(json.dumps({"model.name": "tiny-random", "data.bos": False}))
    with pytest.raises(ValueError, match="data.bos: False then, 'auto' now"):
        check_resume_settings(tmp_path, now)
    # a run from before pruning.reconstruct resumes; what it did record is still compared, setting by setting
    pruning = {"ratio": 0.4, "depth": {"num_blocks": 1}}
    (tmp_path / SETTINGS_FILE).write_text(json.dumps({"model.name": "tiny-random", "pruning": pruning}))
    check_resume_settings(tmp_path, {"pruning": {**pruning, "reconstruct": {"epochs": 0}}})
    with pytest.raises(ValueError, match=r"settings do not describe: pruning.depth.num_blocks: 1 then, 2 now\. "):
        check_resume_settings(tmp_path, {"pruning": {"ratio": 0.4, "depth": {"num_blocks": 2}, "reconstruct": {}}})


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            ["schedule=linear", "schedule.start_step=0", "schedule.end_step=6", "schedule.num_events=2"],
            r"training ends after 3 optimizer steps .* scheduled at steps \[6\]",
        ),
        (
            ["recovery=cpt_then_lora", "recovery.module.lora_from_step=5"],
            "training ends after 3 optimizer steps but recovery.module.lora_from_step=5: the LoRA stage",
        ),
    ],
)
def test_a_pruning_event_or_lora_stage_after_the_last_epoch_is_refused_before_the_first_step(
    wikitext_dir, tmp_path, overrides, message
):
    out = tmp_path / "run"
    epoch_of_3_steps = ["trainer.max_steps=-1", "trainer.max_epochs=1", "+trainer.limit_train_batches=3"]
    with pytest.raises(ValueError, match=message):  # was: trained all 3 steps, then failed check_complete
        run(compose_config(tiny_overrides(wikitext_dir, out) + epoch_of_3_steps + overrides))
    assert not (out / "checkpoints").exists() and not (out / "final").exists()  # not one step trained
    assert any((out / "wandb").glob("offline-run-*")) and wandb.run is None


def test_a_schedule_left_half_done_by_a_time_limit_fails_and_exports_nothing(wikitext_dir, tmp_path):
    out = tmp_path / "run"
    one_second = ["trainer.max_steps=2000", "+trainer.max_time=00:00:00:01"]  # far fewer steps than 2000 in 1 s
    schedule = ["schedule=linear", "schedule.start_step=0", "schedule.end_step=1900", "schedule.num_events=2"]
    with pytest.raises(RuntimeError, match=r"before the pruning events at steps \[1900\].*nothing was exported"):
        run(compose_config(tiny_overrides(wikitext_dir, out) + one_second + schedule))
    assert not (out / "final").exists() and not (out / "pruning_report.json").exists()
    assert any((out / "wandb").glob("offline-run-*")) and wandb.run is None  # the next run in this process logs
    # to a run of its own, not into this failed one's


def write_file(path, content: bytes) -> str:
    path.write_bytes(content)
    return str(path)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["pruning.ratio=abc"], "pruning.ratio must be a number or null, got 'abc'"),
        (["seed=abc"], "seed must be an integer, got 'abc'"),
        (["data.num_workers=-1"], "data.num_workers takes a whole number >= 0, got -1"),
        (["data.max_val_blocks=0"], "data.max_val_blocks takes a whole number >= 1, got 0"),
        (["data.block_size=abc"], "data.block_size takes a whole number >= 2, got 'abc'"),  # was: '<' not supported
        (["data.calibration.seq_len=abc"], "data.calibration.seq_len takes a whole number >= 2, got 'abc'"),
        (["data.calibration.num_samples=100000"], "num_samples / seq_len: asked for 100000 windows of 64 tokens but"),
        (["data.calibration.seq_len=100000000"], r"num_samples / seq_len: asked for 4 windows of 100000000 tokens"),
        (["pruning.depth.num_blocks=4"], "at least one must remain"),
        (["pruning.depth.seq_len=abc"], "pruning.depth.seq_len takes a whole number >= 2, got 'abc'"),
        ([("empty.txt", b"")], r"the data files \['.*empty.txt'\] are empty"),
        ([("latin1.txt", b"caf\xe9 " * 50)], r"cannot read \['.*latin1.txt'\] as text: UnicodeDecodeError"),
        ([("short.txt", b"hello world " * 4)], "short.txt .* gives 0 blocks of 64 tokens"),
        ([("model.gguf", b"GGUF" + bytes(range(60)))], "model.gguf is GGUF v.*this reader handles v2 and v3"),
        # found after the weights loaded, or inside fit, until checked with the config alone
        (["recovery=lora", "recovery.module.lora.r=0"], "lora needs r a positive integer"),
        (["recovery=lora", "recovery.module.lora.target_modules=[q_prj]"], "names no module of the model"),
        (["recovery=distill", "recovery.module.distill.alpha=2"], r"distill.alpha must be in \[0, 1\], got 2"),
        (["recovery=cpt_then_lora", "recovery.module.lora_from_step=0"], "lora_from_step >= 1, got 0"),
        (["recovery.module.optimizer.lr=-1"], "recovery.module.optimizer cannot build an optimizer: Invalid learning"),
        (["recovery.module.optimizer._target_=torch.optim.AdamWW"], "recovery.module.optimizer cannot build"),
        (["schedule=linear", "schedule.end_step=30", "schedule.num_events=3"], "last pruning event is at step 30"),
        (["schedule=linear", "schedule.num_events=2.5"], "schedule.num_events takes a whole number >= 1, got 2.5"),
        (["pruning.depth.num_blocks=true"], "pruning.depth.num_blocks takes a whole number >= 0, got True"),  # was 1
        (["eval.seq_lens=[0]"], "eval.seq_lens takes a whole number >= 2, got 0"),
        (["eval.max_windows=0"], "eval.max_windows takes a whole number >= 1, got 0"),
        (["eval.tasks=[zeroshot]", "eval.task_batch_size=0"], "eval.task_batch_size takes a whole number >= 1, got 0"),
        (["eval.tasks=[zeroshot]", "eval.task_limit=0"], "eval.task_limit takes a whole number >= 1, got 0"),
        (["recovery.module.scheduler.num_warmup_steps=-5"], "num_warmup_steps takes a whole number >= 0, got -5"),
        (["recovery.module.scheduler._target_=torch.optim.lr_scheduler.Nope"], "cannot build a learning-rate sched"),
        (["callbacks.pruning.stats_source=training"], "the only event is at step 0, before any"),  # was ignored
        (["pruning.refit=maybe"], "pruning.refit must be true or false, got 'maybe'"),  # was taken as true
        (["pruning.refit_damp=abc"], "pruning.refit_damp must be a finite non-negative number, got 'abc'"),
    ],
)
def test_bad_input_is_refused_before_the_model_loads(wikitext_dir, tmp_path, monkeypatch, overrides, message):
    import train

    monkeypatch.setattr(train, "load_model", lambda **_: pytest.fail("the model loaded before the refusal"))
    resolved = []
    for item in overrides:
        if isinstance(item, tuple):
            name, content = item
            path = write_file(tmp_path / name, content)
            if name.endswith(".gguf"):
                resolved += [f"model.name={path}", "model.dtype=null"]
            else:
                test = wikitext_dir / "wiki.test.raw"
                resolved += ["data.wikitext_dir=null", f"data.files={{valid:{path},test:{test}}}"]
        else:
            resolved.append(item)
    with pytest.raises(ValueError, match=message):
        run(compose_config(tiny_overrides(wikitext_dir, tmp_path / "run") + resolved))


def test_a_resumed_run_removes_the_temporary_files_of_checkpoint_writes_a_kill_interrupted(tmp_path, wikitext_dir):
    from prune_recover.jobs.preflight import check_run, claim_output

    out = tmp_path / "run"
    cfg = compose_config(tiny_overrides(wikitext_dir, out))
    check_run(cfg)
    claim_output(cfg)  # a new run: records its settings
    (out / "checkpoints").mkdir()
    torch.save({"global_step": 2}, out / "checkpoints" / "last.ckpt")
    complete = (out / "checkpoints" / "last.ckpt").read_bytes()
    partial = [out / "checkpoints" / ".last.ckpt.tmp-1a2b3c4d", out / ".hpc_ckpt_1.ckpt.tmp-5e6f7a8b"]
    for path in partial:
        path.write_bytes(b"half a checkpoint")
    resumed = compose_config(tiny_overrides(wikitext_dir, out) + ["ckpt_path=last"])
    check_run(resumed)
    claim_output(resumed)
    assert not any(path.exists() for path in partial)
    assert (out / "checkpoints" / "last.ckpt").read_bytes() == complete
    (out / "checkpoints" / "last.ckpt").write_bytes(complete[: len(complete) // 2])  # a copy cut short
    with pytest.raises(ValueError, match="last.ckpt is not a whole checkpoint"):
        check_run(resumed)  # torch failed only after the weights loaded, advising weights_only=False


def test_a_resume_finds_its_own_run_by_any_path_and_a_checkpoint_a_kill_left_swapped_out(
    wikitext_dir, tmp_path, monkeypatch
):
    from prune_recover.jobs.preflight import check_run, claim_output

    monkeypatch.chdir(tmp_path)
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)  # a run from before settings were recorded
    torch.save({"global_step": 2}, tmp_path / "run" / "checkpoints" / "last.ckpt")
    by_path = [f"ckpt_path={tmp_path / 'run' / 'checkpoints' / 'last.ckpt'}"]
    check_run(compose_config(tiny_overrides(wikitext_dir, "run") + by_path))  # output_dir relative: its own run
    checkpoints = tmp_path / "run" / "checkpoints"
    (checkpoints / "last.ckpt").rename(checkpoints / ".last.ckpt.old-0123abcd")  # between a swap's two renames
    resumed = compose_config(tiny_overrides(wikitext_dir, "run") + ["ckpt_path=last"])
    check_run(resumed)
    claim_output(resumed)
    assert [p.name for p in checkpoints.iterdir()] == ["last.ckpt"]
