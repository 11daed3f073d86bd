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
