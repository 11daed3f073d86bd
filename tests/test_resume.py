"""Exact resume, the test of record: a run with a mid-training pruning event, killed (SIGKILL) or stopped by SLURM's
SIGUSR1 after a later checkpoint, then resumed, ends with bit-identical weights to the same run left alone.

The training split is small (5 batches an epoch), so the resumed run also crosses epoch boundaries, and the
recovery is LoRA (dropout 0.05), so the RNG states matter too.
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from tests.test_train_cli import REPO, tiny_overrides
from tests.training.test_distributed import fake_slurm_env

STEPS = 60


def resume_overrides(wikitext_dir, tmp_path, out) -> list[str]:
    small = tmp_path / "small.txt"
    if not small.exists():
        small.write_bytes((wikitext_dir / "wiki.valid.raw").read_bytes()[:6000])  # 46 blocks: 42 to train on
    files = f"data.files={{valid:{small},test:{wikitext_dir / 'wiki.test.raw'}}}"
    return tiny_overrides(wikitext_dir, out) + [
        "data.wikitext_dir=null",
        files,
        "data.block_size=128",
        "data.batch_size=8",
        "logger=csv",
        "recovery=lora",
        f"trainer.max_steps={STEPS}",
        "trainer.val_check_interval=20",
        "callbacks.checkpoint.every_n_train_steps=4",
        "schedule.start_step=5",
        "eval.seq_lens=[64]",
        "eval.max_windows=2",
    ]


def start(overrides, env=None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "train.py", *overrides], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


def finished(process: subprocess.Popen, expected: int = 0) -> str:
    _, stderr = process.communicate(timeout=600)
    stderr = stderr.decode()
    assert process.returncode == expected, stderr[-4000:]
    return stderr


def wait_for_checkpoint(path, process, min_step: int, timeout: float = 300) -> int:
    """Wait until `path` holds a checkpoint of step >= min_step; return its step."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, f"the run ended ({process.returncode}) before a checkpoint of step {min_step}"
        if path.exists():
            try:
                step = torch.load(path, map_location="cpu", weights_only=False)["global_step"]
            except Exception:  # being replaced right now
                step = -1
            if step >= min_step:
                return step
        time.sleep(0.05)
    raise AssertionError(f"no checkpoint of step {min_step} within {timeout}s")


def assert_same_run(out, reference) -> None:
    ours, theirs = load_file(out / "final" / "model.safetensors"), load_file(reference / "final" / "model.safetensors")
    assert ours.keys() == theirs.keys()
    different = [name for name in ours if not torch.equal(ours[name], theirs[name])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"
    report, expected = (json.loads((d / "pruning_report.json").read_text()) for d in (out, reference))
    assert report["recovery"]["tokens_seen"] == expected["recovery"]["tokens_seen"] == STEPS * 8 * 128
    assert report["history"] == expected["history"]
    timeless = [[{k: v for k, v in e.items() if k != "seconds"} for e in r["events"]] for r in (report, expected)]
    assert timeless[0] == timeless[1] and [e["step"] for e in report["events"]] == [5]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("resume")


@pytest.fixture(scope="module")
def reference(wikitext_dir, data_dir):
    """The same run left alone, shared by both tests."""
    out = data_dir / "reference"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PRUNE_RECOVER_CACHE": str(data_dir / "cache")}
    finished(start(resume_overrides(wikitext_dir, data_dir, out), {**env, "HF_DATASETS_CACHE": str(data_dir / "ds")}))
    return out


def test_sigkill_after_a_later_checkpoint_then_resume_is_bit_identical(wikitext_dir, data_dir, tmp_path, reference):
    out = tmp_path / "killed"
    first = start(resume_overrides(wikitext_dir, data_dir, out))
    step = wait_for_checkpoint(out / "checkpoints" / "last.ckpt", first, min_step=12)
    first.send_signal(signal.SIGKILL)
    first.communicate()
    assert 12 <= step < STEPS
    stderr = finished(start(resume_overrides(wikitext_dir, data_dir, out) + ["ckpt_path=last"]))
    assert "Restoring states from the checkpoint" in stderr and "Pruning event" not in stderr
    assert_same_run(out, reference)


def test_sigusr1_checkpoint_at_a_step_boundary_then_requeued_resume_is_bit_identical(
    wikitext_dir, data_dir, tmp_path, reference
):
    out = tmp_path / "requeued"
    env = fake_slurm_env(tmp_path, "5151", tasks=1)
    first = start(resume_overrides(wikitext_dir, data_dir, out), env)
    wait_for_checkpoint(out / "checkpoints" / "last.ckpt", first, min_step=12)
    first.send_signal(signal.SIGUSR1)
    stderr = finished(first, expected=128 + signal.SIGUSR1)
    assert "stopped by SIGUSR1" in stderr and (out / "hpc_ckpt_1.ckpt").is_file()
    saved = torch.load(out / "hpc_ckpt_1.ckpt", map_location="cpu", weights_only=False)
    assert saved["hf_config"]["intermediate_size"] == 77 and saved["global_step"] >= 12  # the pruned shapes
    assert (tmp_path / "scontrol.log").read_text().split() == ["requeue", "5151"]
    assert not (out / "final").exists(), "a stopped run exports nothing"
    stderr = finished(start(resume_overrides(wikitext_dir, data_dir, out), env))  # the requeued job: same command
    assert "hpc_ckpt_1.ckpt" in stderr and "Pruning event" not in stderr
    assert_same_run(out, reference)


def test_a_validation_at_a_checkpoint_step_is_in_the_history_after_a_resume(wikitext_dir, tmp_path):
    """Lightning saves on the training batch end, before the validation of that step, and a resumed run skips that
    validation: `last.ckpt` is written again after it (a finished run's last.ckpt is what a kill would leave)."""
    out = tmp_path / "run"
    overrides = tiny_overrides(wikitext_dir, out) + ["logger=csv", "trainer.val_check_interval=2"]
    finished(start([*overrides, "trainer.max_steps=4"]))
    saved = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert saved["global_step"] == 4 and [h["step"] for h in saved["val_history"]] == [2, 4]
    finished(start([*overrides, "trainer.max_steps=6", "ckpt_path=last"]))
    report = json.loads((out / "pruning_report.json").read_text())
    assert [h["step"] for h in report["history"]] == [2, 4, 6]
