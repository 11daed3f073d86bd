"""The training order of a resumed run: resumed from any checkpoint (mid-epoch or at an epoch's end), a real
Trainer feeds exactly the batches the uninterrupted run fed after that step (EpochShuffle + StatefulDataLoader),
also on each rank of a DDP run resumed in a later epoch."""

import json
import subprocess
import sys

import lightning as L
import pytest
import torch
from datasets import Dataset
from lightning.pytorch.callbacks import ModelCheckpoint
from torchdata.stateful_dataloader import StatefulDataLoader

from prune_recover.training.resume import EpochShuffle, StreamLoader
from tests.conftest import REPO


class Recorder(L.LightningModule):
    def __init__(self, streaming: bool = False):
        super().__init__()
        self.streaming = streaming
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.fed: dict[int, list[int]] = {}

    def training_step(self, batch, batch_idx):
        self.fed[self.global_step] = batch.tolist()
        return (self.weight * batch.float()).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)

    def train_dataloader(self):
        if self.streaming:  # a stream without a length: Lightning fetches one batch ahead
            stream = Dataset.from_dict({"x": list(range(200))}).to_iterable_dataset().with_format("torch")
            return StreamLoader(stream, batch_size=8, collate_fn=lambda rows: torch.stack([r["x"] for r in rows]))
        return StatefulDataLoader(
            list(range(42)), batch_size=8, sampler=EpochShuffle(42, seed=3, batch_size=8), drop_last=True
        )


def fit(tmp_path, ckpt_path=None, streaming=False) -> dict[int, list[int]]:
    module = Recorder(streaming)
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=3, save_top_k=-1)
    trainer = L.Trainer(
        max_steps=17, callbacks=[checkpoints], logger=False, enable_progress_bar=False, enable_model_summary=False
    )
    trainer.fit(module, ckpt_path=ckpt_path)
    return module.fed


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("order")
    return out, fit(out)


@pytest.mark.parametrize("step", [3, 6, 9, 15])  # 5 batches an epoch: 15 ends epoch 2, the others are mid-epoch
def test_a_resumed_run_feeds_the_batches_the_uninterrupted_run_fed(reference, tmp_path, step):
    folder, expected = reference
    (checkpoint,) = (folder / "ckpt").glob(f"*-step={step}.ckpt")
    fed = fit(tmp_path, ckpt_path=str(checkpoint))
    assert sorted(fed) == list(range(step, 17))
    assert fed == {s: expected[s] for s in range(step, 17)}


def test_every_epoch_is_a_new_order_of_the_same_items():
    sampler = EpochShuffle(10, seed=0)
    first = list(sampler)
    sampler.set_epoch(1)
    assert sorted(first) == sorted(sampler) == list(range(10)) and first != list(sampler)


def test_an_epoch_serves_whole_batches_only():
    sampler = EpochShuffle(42, seed=0, batch_size=8)
    assert len(sampler) == len(list(sampler)) == 40


@pytest.mark.parametrize("step", [3, 9])
def test_a_resumed_stream_continues_after_the_last_batch_trained_not_the_one_prefetched(tmp_path, step):
    expected = fit(tmp_path / "reference", streaming=True)
    (checkpoint,) = (tmp_path / "reference" / "ckpt").glob(f"*-step={step}.ckpt")
    fed = fit(tmp_path / "resumed", ckpt_path=str(checkpoint), streaming=True)
    assert fed == {s: expected[s] for s in range(step, 17)}


def run_ddp_recorder(out, files: dict, ckpt_path=None) -> list[dict]:
    worker = REPO / "tests" / "training" / "ddp_resume_order_worker.py"
    command = [sys.executable, str(worker), str(out), json.dumps(files), *([str(ckpt_path)] if ckpt_path else [])]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    return [json.loads((out / f"rank{rank}.json").read_text()) for rank in (0, 1)]


def test_a_ddp_run_resumed_in_a_later_epoch_feeds_each_rank_what_the_uninterrupted_run_fed(tmp_path):
    texts = [f"row {i:03d} ".ljust(31, "x") for i in range(15)]  # with its EOS one block each: 3 steps an epoch
    files = {split: tmp_path / f"{split}.jsonl" for split in ("train", "valid", "test")}
    for split, path in files.items():
        path.write_text("".join(json.dumps({"text": t}) + "\n" for t in (texts if split == "train" else texts[:4])))
    files = {split: str(path) for split, path in files.items()}
    expected = run_ddp_recorder(tmp_path / "reference", files)
    steps = [range(3 * epoch, 3 * epoch + 3) for epoch in range(4)]
    epochs = [[tuple(b) for rank in (0, 1) for s in epoch for b in expected[rank][str(s)]] for epoch in steps]
    assert all(len(set(blocks)) == 12 for blocks in epochs)  # each epoch serves every block once, over both ranks
    assert len({tuple(blocks) for blocks in epochs}) == 4  # in a new order each epoch
    (checkpoint,) = (tmp_path / "reference" / "ckpt").glob("*-step=8.ckpt")
    assert torch.load(checkpoint, weights_only=False)["epoch"] >= 1  # a later epoch than the first
    fed = run_ddp_recorder(tmp_path / "resumed", files, checkpoint)
    for rank in (0, 1):
        assert sorted(fed[rank], key=int) == [str(s) for s in range(8, 14)]
        assert fed[rank] == {s: expected[rank][s] for s in fed[rank]}, f"rank {rank}"


def test_ranks_share_each_epochs_order_in_whole_batches_without_overlap():
    shares = [list(EpochShuffle(42, seed=3, batch_size=4, num_replicas=2, rank=rank)) for rank in (0, 1)]
    assert len(shares[0]) == len(shares[1]) == 20 and not set(shares[0]) & set(shares[1])  # 40 of 42, 5 batches each
    assert sorted(shares[0] + shares[1]) == sorted(EpochShuffle(42, seed=3, batch_size=8))  # world 1, same order


def test_rng_states_round_trip_cpu_numpy_and_python():
    import random

    import numpy as np

    from prune_recover.training.resume import RngStates

    saved = RngStates().state_dict()
    draws = (torch.rand(3), np.random.rand(3), random.random())
    RngStates().load_state_dict(saved)
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(draws[0], again[0]) and (draws[1] == again[1]).all() and draws[2] == again[2]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_rng_states_round_trip_the_cuda_generator():
    from prune_recover.training.resume import RngStates

    torch.rand(1, device="cuda")  # initialises CUDA
    saved = RngStates().state_dict()
    draws = torch.rand(3, device="cuda")
    RngStates().load_state_dict(saved)
    assert torch.equal(torch.rand(3, device="cuda"), draws)
