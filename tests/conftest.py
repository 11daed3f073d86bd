"""Shared fixtures: tiny random models built in code, the local WikiText-2 files, a clean cache."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

# Set before anything imports huggingface_hub or datasets: both read these once, when first imported. (A fixture's
# setenv came too late: in-process tests reached for the hub, 20+ s of retries per lookup, and lm-eval's datasets
# wrote into the user's ~/.cache/huggingface/datasets.) Subprocesses inherit them, and a worker that imports this
# file reuses the test process's cache folder instead of leaving one of its own behind.
# The process that made the folder removes it when it exits (a pytest session, or a script importing the tests).
if "PRUNE_RECOVER_TESTS_DATASETS_CACHE" not in os.environ:
    os.environ["PRUNE_RECOVER_TESTS_DATASETS_CACHE"] = tempfile.mkdtemp(prefix="prune-recover-tests-datasets-")
    atexit.register(shutil.rmtree, os.environ["PRUNE_RECOVER_TESTS_DATASETS_CACHE"], ignore_errors=True)
DATASETS_CACHE = Path(os.environ["PRUNE_RECOVER_TESTS_DATASETS_CACHE"])
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["HF_DATASETS_CACHE"] = str(DATASETS_CACHE)

import pytest  # noqa: E402
import torch  # noqa: E402

from prune_recover.tiny_models import byte_tokenizer, tiny_random  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
WIKITEXT2_DIR = Path(os.environ.get("PRUNE_RECOVER_WIKITEXT2", REPO.parent / "shared" / "data" / "wikitext-2-raw"))


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path_factory):
    """W&B offline and a per-session cache, so tests never touch the user's files (the hub and datasets are offline,
    with their own cache, from the top of this file)."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    if "PRUNE_RECOVER_CACHE" not in os.environ:
        monkeypatch.setenv("PRUNE_RECOVER_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def wikitext_dir() -> Path:
    if not (WIKITEXT2_DIR / "wiki.valid.raw").is_file():
        pytest.fail(f"WikiText-2 files not found in {WIKITEXT2_DIR}; set PRUNE_RECOVER_WIKITEXT2")
    return WIKITEXT2_DIR


@pytest.fixture
def tiny():
    """A fresh tiny random Llama and its byte tokenizer."""
    return tiny_random("llama")


def token_batches(count: int = 3, batch: int = 2, seq_len: int = 32, seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(3, 259, (batch, seq_len), generator=generator) for _ in range(count)]


def logits_around_a_change_in_one_autocast_region(model, ids: torch.Tensor, change) -> tuple:
    """bf16-autocast logits of `ids` before `change()` and after it in the same autocast region, then in a fresh one."""
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        before = model(input_ids=ids).logits
        change()
        inside = model(input_ids=ids).logits
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        fresh = model(input_ids=ids).logits
    return before, inside, fresh


def tiny_data(wikitext_dir, **kwargs):
    """WikiText-2 valid as training data for a tiny model: 64-token blocks, a few calibration windows."""
    from prune_recover.training.datamodule import CausalLMDataModule

    settings = dict(
        wikitext_dir=str(wikitext_dir),
        train_split="valid",
        val_split="valid",
        val_fraction=0.05,
        block_size=64,
        batch_size=4,
        max_val_blocks=8,
        calibration={"num_samples": 8, "seq_len": 64, "batch_size": 4},
    )
    settings.update(kwargs)
    return CausalLMDataModule(byte_tokenizer(), **settings)


def tiny_trainer(root, callbacks=(), **kwargs):
    import lightning as L

    settings = dict(
        accelerator="cpu",
        devices=1,
        max_steps=6,
        max_epochs=-1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=2,
        val_check_interval=3,
        check_val_every_n_epoch=None,
        default_root_dir=str(root),
    )
    settings.update(kwargs)
    return L.Trainer(callbacks=list(callbacks), **settings)
