import json

import pytest
import torch

from prune_recover.data import CausalLMDataModule
from prune_recover.models import byte_tokenizer
from prune_recover.streaming import PackedStream
from prune_recover.text import tokenize_file


def wikitext(folder, **kwargs):
    defaults = {"wikitext_dir": str(folder), "train_split": "valid", "val_split": "valid", "val_fraction": 0.1}
    return CausalLMDataModule(byte_tokenizer(), **{**defaults, "block_size": 64, **kwargs})


def test_wikitext_splits_blocks_and_held_out_validation(wikitext_dir):
    data = wikitext(wikitext_dir, batch_size=8, max_val_blocks=5)
    valid = tokenize_file(wikitext_dir / "wiki.valid.raw", data.tokenizer)
    assert torch.equal(data.token_ids("valid"), valid)
    assert torch.equal(data.token_ids("test"), tokenize_file(wikitext_dir / "wiki.test.raw", data.tokenizer))
    train_ids, val_ids = data._train_val_ids()
    assert torch.equal(torch.cat([train_ids, val_ids]), valid)
    assert val_ids.numel() == int(valid.numel() * 0.1) // 64 * 64
    (batch,) = next(iter(data.train_dataloader()))
    assert batch.shape == (8, 64)
    val_batches = list(data.val_dataloader())
    assert sum(b[0].shape[0] for b in val_batches) == 5
    assert torch.equal(val_batches[0][0][0], val_ids[:64])


def test_calibration_comes_from_the_training_part(wikitext_dir):
    data = wikitext(wikitext_dir, calibration={"num_samples": 6, "seq_len": 32, "batch_size": 4, "seed": None})
    batches = data.calibration_batches()
    assert [tuple(b.shape) for b in batches] == [(4, 32), (2, 32)]
    assert torch.equal(batches[0][1], data._train_val_ids()[0][32:64])


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"wikitext_dir": "/nonexistent"}, FileNotFoundError, "WikiText-2 train file not found: /nonexistent"),
        ({"calibration": {"split": "test"}}, ValueError, "test split 'test' may not be trained, validated or calib"),
        ({"val_fraction": 0.0}, ValueError, "needs data.val_fraction > 0"),
        ({"files": {"train": __file__}}, ValueError, "set one data source"),
        ({"document_separator": "newline"}, ValueError, "document_separator must be 'eos' or 'none'"),
        ({"calibration": {"num_samples": 0}}, ValueError, "data.calibration needs num_samples >= 1"),
    ],
)
def test_bad_data_settings(wikitext_dir, kwargs, error, message):
    with pytest.raises(error, match=message):
        wikitext(wikitext_dir, **kwargs)


def test_no_source_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("PRUNE_RECOVER_WIKITEXT2", raising=False)
    with pytest.raises(ValueError, match="no data source"):
        CausalLMDataModule(byte_tokenizer())


def test_hub_dataset_offline_names_the_alternatives(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    data = CausalLMDataModule(
        byte_tokenizer(), hub_dataset="prune-recover-tests/absent", hub_config="x", val_split="valid"
    )
    with pytest.raises(FileNotFoundError, match="Use data.wikitext_dir or data.files instead"):
        data.token_ids("train")


def write_jsonl(path, texts):
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return path


def test_json_documents_are_joined_with_eos_and_stream_identically(tmp_path):
    texts = [f"document number {i} " * (i % 5 + 1) for i in range(40)]
    files = {
        "train": str(write_jsonl(tmp_path / "train.jsonl", texts)),
        "valid": str(write_jsonl(tmp_path / "valid.jsonl", texts[:10])),
        "test": str(write_jsonl(tmp_path / "test.jsonl", texts[10:20])),
    }
    data = CausalLMDataModule(byte_tokenizer(), files=files, block_size=16, batch_size=4)
    ids = data.token_ids("train")
    eos = data.tokenizer.eos_token_id
    assert (ids == eos).sum() == 39
    first = data.tokenizer(texts[0], add_special_tokens=False)["input_ids"]
    assert ids[: len(first) + 1].tolist() == first + [eos]

    calibration = {"num_samples": 2, "seq_len": 16, "seed": None}
    streaming = CausalLMDataModule(
        byte_tokenizer(), files=files, block_size=16, batch_size=4, streaming=True, calibration=calibration
    )
    streamed = torch.cat([b[0] for b in streaming.train_dataloader()]).flatten()
    # the stream ends every document with EOS, the in-memory join only separates them
    expected = torch.cat([ids, torch.tensor([eos])])
    assert torch.equal(streamed, expected[: streamed.numel()]) and streamed.numel() >= expected.numel() - 16 * 4
    assert torch.equal(streaming.calibration_batches()[0].flatten(), ids[:32])


def test_packed_stream_shards_are_disjoint_and_complete(tmp_path, monkeypatch):
    import datasets

    path = write_jsonl(tmp_path / "corpus.jsonl", [f"row {i} text" for i in range(30)])
    rows = datasets.load_dataset("json", data_files=str(path), split="train", streaming=True)
    tokenizer = byte_tokenizer()
    everything = [b[0] for b in PackedStream(rows, tokenizer, "text", 8, "eos", shard=False)]
    shards = []
    for rank in range(2):
        monkeypatch.setattr("prune_recover.streaming._shard", lambda rank=rank: (rank, 2))
        shards.append([b[0] for b in PackedStream(rows, tokenizer, "text", 8, "eos")])
    assert len(shards[0]) + len(shards[1]) == len(everything)
    assert all(torch.equal(a, b) for a, b in zip(shards[0], everything[0::2], strict=True))
    assert all(torch.equal(a, b) for a, b in zip(shards[1], everything[1::2], strict=True))


def test_training_corpus_with_wikitext_for_validation_and_test(tmp_path, wikitext_dir):
    train = write_jsonl(tmp_path / "train.jsonl", [f"pretraining document {i}" for i in range(200)])
    data = CausalLMDataModule(
        byte_tokenizer(), files={"train": str(train)}, eval_from={"wikitext_dir": str(wikitext_dir)}, block_size=32
    )
    assert data.describe_split("train") == str(train)
    assert data.describe_split("test").endswith("wiki.test.raw")
    assert torch.equal(data.token_ids("valid"), tokenize_file(wikitext_dir / "wiki.valid.raw", data.tokenizer))
    assert next(iter(data.train_dataloader()))[0].shape == (4, 32)
