"""SIGKILL at random moments of one tiny run, 20 times, each time resumed with `ckpt_path=last`: the run still
finishes with a complete `final/`, an intact report and the weights of the same run never interrupted.

Half the kills wait for a checkpoint write to be under way (its temporary file beside `last.ckpt`) and strike
then; `$TMPDIR` is put on another filesystem than the output (tmpfs `/dev/shm` where there is one), the cluster
layout that used to leave an empty `last.ckpt`. After every kill `last.ckpt` must be a complete checkpoint.
About five minutes on 2 cores: `python -m pytest -m stress`; the default run skips it.
"""

import json
import os
import random
import signal
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.test_resume import finished, resume_overrides, start

pytestmark = pytest.mark.stress
TRIALS = 20
STEPS = 240  # a checkpoint every 2 steps; each trial moves the run on by a few


def trial_overrides(wikitext_dir, tmp_path, out) -> list[str]:
    changed = {"trainer.max_steps": STEPS, "callbacks.checkpoint.every_n_train_steps": 2}
    kept = [o for o in resume_overrides(wikitext_dir, tmp_path, out) if o.split("=")[0] not in changed]
    return kept + [f"{key}={value}" for key, value in changed.items()]


def other_filesystem_tmpdir(out: Path) -> dict:
    shm = Path("/dev/shm")
    if shm.is_dir() and os.stat(shm).st_dev != os.stat(out.parent).st_dev:
        return {**os.environ, "TMPDIR": str(shm)}
    return dict(os.environ)


def kill_at_random(process, checkpoints: Path, after_step: int, during_write: bool, rng: random.Random) -> bool:
    """SIGKILL `process` once a checkpoint newer than `after_step` exists (then after a random delay, or the moment
    a checkpoint write is under way); False if the run finished first."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        if saved_step(checkpoints / "last.ckpt") > after_step:
            break
        time.sleep(0.02)
    if during_write:
        while process.poll() is None and not any(checkpoints.glob(".last.ckpt.tmp-*")):
            time.sleep(0.001)
    else:
        time.sleep(rng.uniform(0, 0.3))
    if process.poll() is not None:
        return False
    process.send_signal(signal.SIGKILL)
    process.communicate()
    return True


def saved_step(path: Path) -> int:
    try:
        return torch.load(path, map_location="cpu", weights_only=False)["global_step"]
    except Exception:  # absent, or being replaced right now
        return -1


def test_twenty_random_sigkills_then_resume_end_as_the_run_left_alone(wikitext_dir, tmp_path):
    rng = random.Random(0)
    reference, out = tmp_path / "reference", tmp_path / "killed"
    env = other_filesystem_tmpdir(tmp_path)
    finished(start(trial_overrides(wikitext_dir, tmp_path, reference)))
    overrides = trial_overrides(wikitext_dir, tmp_path, out)
    kills, step = 0, 0
    for trial in range(TRIALS):
        process = start(overrides + (["ckpt_path=last"] if trial else []), env)
        if not kill_at_random(process, out / "checkpoints", step, during_write=trial % 2 == 1, rng=rng):
            break
        kills += 1
        checkpoint = out / "checkpoints" / "last.ckpt"
        assert checkpoint.stat().st_size > 0, f"kill {kills} left an empty last.ckpt"
        step = torch.load(checkpoint, map_location="cpu", weights_only=False)["global_step"]  # complete
    assert kills == TRIALS, f"the run finished after {kills} kills: lengthen it"
    finished(start(overrides + ["ckpt_path=last"], env))
    ours, theirs = (load_file(d / "final" / "model.safetensors") for d in (out, reference))
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[name], theirs[name]) for name in ours)
    report, expected = (json.loads((d / "pruning_report.json").read_text()) for d in (out, reference))
    assert report["recovery"]["tokens_seen"] == expected["recovery"]["tokens_seen"] == STEPS * 8 * 128
    assert report["final"]["ppl"] == expected["final"]["ppl"]
    assert report["history"] == expected["history"], "a validation was lost or changed by a kill"
    assert not list(out.rglob(".*.tmp-*")), "temporary files of interrupted writes were left behind"
