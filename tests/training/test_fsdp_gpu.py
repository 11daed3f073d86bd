"""FSDP end to end through Lightning (`trainer=fsdp`, 2 processes): needs 2 CUDA GPUs, skipped elsewhere.

On CPU, tests/training/test_full_state.py proves the gather and export with torch's own FSDP2 on gloo.
"""

import json
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM

from tests.test_train_cli import REPO, tiny_overrides

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs (Lightning's FSDP refuses the CPU)"),
]


@pytest.mark.parametrize("recovery", ["full", "distill"])
def test_fsdp_run_prunes_before_sharding_trains_and_exports_the_gathered_model(wikitext_dir, tmp_path, recovery):
    """With `recovery=distill` the teacher is sharded too (`shard_frozen`) and runs in step on both ranks."""
    out = tmp_path / "fsdp"
    overrides = tiny_overrides(wikitext_dir, out) + [
        f"recovery={recovery}",
        "trainer=fsdp",
        "trainer.devices=2",
        "trainer.precision=bf16-mixed",
        "logger=csv",
        "model.name=tiny-random",
    ]
    result = subprocess.run([sys.executable, "train.py", *overrides], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads((out / "pruning_report.json").read_text())
    assert report["recovery"]["world_size"] == 2 and report["events"][0]["step"] == 0
    model = AutoModelForCausalLM.from_pretrained(out / "final")
    assert sum(p.numel() for p in model.parameters()) == report["final"]["params"]
    assert model.config.intermediate_size == report["final"]["intermediate_size"] < 128


def test_fsdp_sharded_last_checkpoint_is_a_whole_folder_and_resumes(wikitext_dir, tmp_path):
    """`AtomicFSDPStrategy` writes each sharded checkpoint beside `last.ckpt` and swaps it in: no staging folder
    is left, and a resume loads it (the CPU test of the swap is tests/training/test_sharded_checkpoint.py)."""
    out = tmp_path / "fsdp"
    overrides = tiny_overrides(wikitext_dir, out) + ["trainer=fsdp", "trainer.devices=2", "logger=csv"]
    first = subprocess.run([sys.executable, "train.py", *overrides], cwd=REPO, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr[-4000:]
    last = out / "checkpoints" / "last.ckpt"
    assert last.is_dir() and (last / ".metadata").is_file() and (last / "meta.pt").is_file()
    assert not list((out / "checkpoints").glob(".last.ckpt.*"))
    resumed = overrides + ["ckpt_path=last", "trainer.max_steps=6"]
    second = subprocess.run([sys.executable, "train.py", *resumed], cwd=REPO, capture_output=True, text=True)
    assert second.returncode == 0, second.stderr[-4000:]
    assert json.loads((out / "pruning_report.json").read_text())["recovery"]["steps"] == 6
