import json

import pytest
import torch

from prune_recover.data.packing import block_tensor
from prune_recover.data.sources import Source
from prune_recover.data.tokens import concatenated_ids, tokenize_rows
from prune_recover.evaluation.evaluator import build_evaluator
from prune_recover.tiny_models import byte_tokenizer
from prune_recover.training.datamodule import CausalLMDataModule


def wikitext(folder, **kwargs):
    defaults = {"wikitext_dir": str(folder), "train_split": "valid", "val_split": "valid", "val_fraction": 0.1}
    defaults["document_separator"] = "none"  # as configs/data/wikitext2.yaml: a file is one string
    return CausalLMDataModule(byte_tokenizer(), **{**defaults, "block_size": 64, **kwargs})


def file_ids(path, tokenizer) -> torch.Tensor:
    """The protocol's reading of a text file: one string, tokenized once, no special tokens."""
    return torch.tensor(tokenizer(path.read_text(encoding="utf-8"), add_special_tokens=False)["input_ids"])


def test_wikitext_splits_blocks_and_held_out_validation(wikitext_dir):
    data = wikitext(wikitext_dir, batch_size=8, max_val_blocks=5)
    valid = file_ids(wikitext_dir / "wiki.valid.raw", data.tokenizer)
    assert torch.equal(data.token_ids("valid"), valid)
    assert torch.equal(data.token_ids("test"), file_ids(wikitext_dir / "wiki.test.raw", data.tokenizer))
    blocks = valid[: valid.numel() // 64 * 64].view(-1, 64)
    held_out = int(valid.numel() * 0.1) // 64
    train, val = data._train_val_blocks()
    assert torch.equal(block_tensor(train), blocks[:-held_out]) and torch.equal(block_tensor(val), blocks[-held_out:])
    batch = next(iter(data.train_dataloader()))
    assert batch["input_ids"].shape == (8, 64)
    val_batches = list(data.val_dataloader())
    assert sum(b["input_ids"].shape[0] for b in val_batches) == 5
    assert torch.equal(val_batches[0]["input_ids"][0], blocks[-held_out])
    assert torch.equal(data.val_ids(), blocks[-held_out:].flatten())


def test_calibration_comes_from_the_training_part(wikitext_dir):
    data = wikitext(wikitext_dir, calibration={"num_samples": 6, "seq_len": 32, "batch_size": 4, "seed": None})
    batches = data.calibration_batches()
    assert [tuple(b.shape) for b in batches] == [(4, 32), (2, 32)]
    assert torch.equal(batches[0][1], block_tensor(data._train_val_blocks()[0]).flatten()[32:64])


def test_with_a_tokenizer_that_starts_texts_with_bos_every_block_and_window_starts_with_it(wikitext_dir):
    data = wikitext(wikitext_dir, calibration={"num_samples": 6, "seq_len": 32, "batch_size": 4, "seed": None})
    data.set_tokenizer(byte_tokenizer(leading_bos=True))  # as Llama 3's and Gemma's: data.bos=auto follows it
    valid, bos = file_ids(wikitext_dir / "wiki.valid.raw", data.tokenizer), data.tokenizer.bos_token_id
    text = valid[: valid.numel() // 63 * 63].view(-1, 63)
    blocks = torch.cat([torch.full((len(text), 1), bos), text], dim=1)
    held_out = int(valid.numel() * 0.1) // 63
    train, val = data._train_val_blocks()
    assert torch.equal(block_tensor(train), blocks[:-held_out]) and torch.equal(block_tensor(val), blocks[-held_out:])
    assert (next(iter(data.train_dataloader()))["input_ids"][:, 0] == bos).all()
    first = data.calibration_batches()[0]
    assert torch.equal(first[0], torch.cat([torch.tensor([bos]), text.flatten()[:31]]))
    assert torch.equal(first[1], torch.cat([torch.tensor([bos]), text.flatten()[31:62]]))
    assert data.describe()["bos"] == bos
    evaluator = build_evaluator(data.token_ids("test"), data.tokenizer, seq_lens=[64], bos=data.bos_id())
    assert evaluator.protocols[0].bos == bos
    data = wikitext(wikitext_dir, bos=False)
    data.set_tokenizer(byte_tokenizer(leading_bos=True))
    valid_blocks = valid[: valid.numel() // 64 * 64].view(-1, 64)
    assert torch.equal(block_tensor(data._train_val_blocks()[0]), valid_blocks[: -(int(valid.numel() * 0.1) // 64)])


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"wikitext_dir": "/nonexistent"}, FileNotFoundError, "WikiText-2 train file not found: /nonexistent"),
        ({"calibration": {"split": "test"}}, ValueError, "test split 'test' may not be trained, validated or calib"),
        ({"val_fraction": 0.0}, ValueError, "needs data.val_fraction > 0"),
        ({"files": {"train": __file__}}, ValueError, "set one data source"),
        ({"document_separator": "newline"}, ValueError, r"data.document_separator must be one of \('eos', 'none'\)"),
        ({"calibration": {"num_samples": 0}}, ValueError, "calibration.num_samples takes a whole number >= 1, got 0"),
        ({"bos": "yes"}, ValueError, r"data.bos must be one of \('auto', True, False\), got 'yes'"),
    ],
)
def test_bad_data_settings(wikitext_dir, kwargs, error, message):
    with pytest.raises(error, match=message):
        wikitext(wikitext_dir, **kwargs)


def test_calibration_names_its_settings_only_for_too_little_text(wikitext_dir, tmp_path):
    (tmp_path / "empty.txt").write_text("")
    files = {"train": str(wikitext_dir / "wiki.valid.raw"), "extra": str(tmp_path / "empty.txt")}
    data = CausalLMDataModule(
        byte_tokenizer(), files=files, val_split="train", val_fraction=0.1, calibration={"split": "extra"}
    )
    with pytest.raises(ValueError, match=r"^the data files \[.*empty.txt'\] are empty"):  # not num_samples / seq_len
        data.calibration_batches()
    data = CausalLMDataModule(
        byte_tokenizer(),
        files=files,
        val_split="train",
        val_fraction=0.1,
        calibration={"split": "train", "seq_len": 10**9},
    )
    with pytest.raises(ValueError, match="^data.calibration.num_samples / seq_len: asked for 64 windows of 1000000000"):
        data.calibration_batches()


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


def test_json_documents_end_with_eos_and_stream_identically(tmp_path):
    texts = [f"document number {i} " * (i % 5 + 1) for i in range(40)]
    files = {
        "train": str(write_jsonl(tmp_path / "train.jsonl", texts)),
        "valid": str(write_jsonl(tmp_path / "valid.jsonl", texts[:10])),
        "test": str(write_jsonl(tmp_path / "test.jsonl", texts[10:20])),
    }
    data = CausalLMDataModule(byte_tokenizer(), files=files, block_size=16, batch_size=4)
    ids = data.token_ids("train")
    eos = data.tokenizer.eos_token_id
    assert (ids == eos).sum() == 39 and ids[-1] != eos  # between documents only
    first = data.tokenizer(texts[0], add_special_tokens=False)["input_ids"]
    assert ids[: len(first) + 1].tolist() == first + [eos]
    in_memory = torch.cat([b["input_ids"] for b in data.train_dataloader()])
    assert in_memory.shape[1] == 16 and in_memory.shape[0] == (ids.numel() + 1) // 64 * 4  # whole batches only

    calibration = {"num_samples": 2, "seq_len": 16, "seed": None}
    streaming = CausalLMDataModule(
        byte_tokenizer(), files=files, block_size=16, batch_size=4, streaming=True, calibration=calibration
    )
    streamed = torch.cat([b["input_ids"] for b in streaming.train_dataloader()]).flatten()
    packed = torch.cat([ids, torch.tensor([eos])])  # training rows all end with EOS
    assert torch.equal(streamed, packed[: packed.numel() // 16 * 16])  # all 40 rows fit one packing batch
    assert torch.equal(streaming.calibration_batches()[0].flatten(), ids[:32])


def test_tokenized_rows_are_cached_by_the_dataset_fingerprint(tmp_path):
    import datasets

    path = tmp_path / "corpus.txt"
    path.write_text(" = Title = \n hello world \n")
    rows = datasets.load_dataset("text", data_files=str(path), sample_by="document", split="train")
    tokenizer = byte_tokenizer()
    first = tokenize_rows(rows, tokenizer)
    assert torch.equal(concatenated_ids(first), file_ids(path, tokenizer))
    again = tokenize_rows(rows, byte_tokenizer())
    assert again.cache_files == first.cache_files and first.cache_files  # read back from the map cache


def test_training_corpus_with_wikitext_for_validation_and_test(tmp_path, wikitext_dir):
    train = write_jsonl(tmp_path / "train.jsonl", [f"pretraining document {i}" for i in range(200)])
    data = CausalLMDataModule(
        byte_tokenizer(), files={"train": str(train)}, eval_from={"wikitext_dir": str(wikitext_dir)}, block_size=32
    )
    assert data.describe_split("train") == str(train)
    assert data.describe_split("test").endswith("wiki.test.raw")
    assert torch.equal(data.token_ids("valid"), file_ids(wikitext_dir / "wiki.valid.raw", data.tokenizer))
    assert next(iter(data.train_dataloader()))["input_ids"].shape == (4, 32)


def mixture_data(wikitext_dir, tmp_path, **kwargs):
    """WikiText-2 valid (3 parts) mixed with a JSON-lines corpus of numbered documents (1 part)."""
    corpus = write_jsonl(tmp_path / "docs.jsonl", [f"<doc {i:03d}> " + "lorem ipsum " * 40 for i in range(120)])
    mixture = {
        "wikitext": {"weight": 3, "wikitext_dir": str(wikitext_dir), "split": "valid", "val_fraction": 0.1},
        "docs": {"weight": 1, "files": {"train": str(corpus)}, "split": "train", "val_fraction": 0.2},
    }
    settings = dict(wikitext_dir=str(wikitext_dir), block_size=64, mixture=mixture, document_separator="none")
    return CausalLMDataModule(byte_tokenizer(), **{**settings, **kwargs})


def domain_of(block: torch.Tensor, tokenizer) -> str:
    text = tokenizer.decode(block)
    return "docs" if ("lorem" in text or "<doc" in text) else "wikitext"


def test_a_mixture_interleaves_single_domain_blocks_by_weight_and_calibrates_in_proportion(wikitext_dir, tmp_path):
    data = mixture_data(wikitext_dir, tmp_path, calibration={"num_samples": 8, "seq_len": 32, "batch_size": 8})
    train, val = data._train_val_blocks()
    (wiki_train, wiki_val), (docs_train, docs_val) = data._component_blocks()
    domains = [domain_of(block, data.tokenizer) for block in block_tensor(train)]
    # interleave_datasets stops when the smaller share (docs) runs out: all docs blocks, about 3x as many wikitext
    assert domains.count("docs") == len(docs_train)
    assert 2.4 < domains.count("wikitext") / domains.count("docs") < 3.6
    assert len(val) < len(wiki_val) + len(docs_val) and {domain_of(b, data.tokenizer) for b in block_tensor(val)} == {
        "wikitext",
        "docs",
    }
    held_out = set(map(tuple, block_tensor(wiki_val).tolist()))
    assert not held_out & set(map(tuple, block_tensor(train).tolist())), "validation blocks leaked into training"
    (calibration,) = data.calibration_batches()
    assert [domain_of(window, data.tokenizer) for window in calibration].count("docs") == 2  # 8 x 1/4
    assert set(data.describe()["train"]) == {"wikitext", "docs"}


def streamed_mixture(wikitext_dir, tmp_path, **kwargs):
    """WikiText-2 (3 parts) and a corpus of numbered documents (1 part), each validated on its own valid split; the
    WikiText component reads a small folder cut from wiki.valid.raw (its train split is a stream)."""
    corpus = write_jsonl(tmp_path / "docs.jsonl", [f"<doc {i:03d}> " + "lorem ipsum " * 40 for i in range(120)])
    valid = write_jsonl(tmp_path / "docs-valid.jsonl", [f"<doc v{i:02d}> " + "dolor sit " * 40 for i in range(10)])
    lines = (wikitext_dir / "wiki.valid.raw").read_text().splitlines(keepends=True)
    small = tmp_path / "wikitext"
    small.mkdir()
    (small / "wiki.train.tokens").write_text("".join(lines[:600]))
    (small / "wiki.valid.raw").write_text("".join(lines[600:900]))
    (small / "wiki.test.raw").write_text("".join(lines[900:950]))  # the folder's third file; never read here
    mixture = {
        "wikitext": {"weight": 3, "wikitext_dir": str(small), "split": "train", "val_split": "valid"},
        "docs": {"weight": 1, "files": {"train": str(corpus), "valid": str(valid)}, "val_split": "valid"},
    }
    settings = dict(wikitext_dir=str(wikitext_dir), block_size=64, mixture=mixture, document_separator="none")
    return CausalLMDataModule(byte_tokenizer(), streaming=True, **{**settings, **kwargs})


def test_a_streamed_mixture_draws_from_every_component(wikitext_dir, tmp_path):
    data = streamed_mixture(wikitext_dir, tmp_path, batch_size=8)
    batches = [batch["input_ids"] for _, batch in zip(range(12), data.train_dataloader(), strict=False)]
    domains = [domain_of(block, data.tokenizer) for batch in batches for block in batch]
    assert len(domains) == 96 and 0 < domains.count("docs") < domains.count("wikitext")


def test_a_stream_validates_on_the_validation_splits_without_reading_the_training_split_whole(
    wikitext_dir, tmp_path, monkeypatch
):
    data = streamed_mixture(wikitext_dir, tmp_path, batch_size=8)
    reads = []
    rows = Source.rows
    monkeypatch.setattr(Source, "rows", lambda self, split, **kw: reads.append((split, kw)) or rows(self, split, **kw))
    data.check_sizes(calibration=False)
    blocks = [block for batch in data.val_dataloader() for block in batch["input_ids"]]
    assert all(split == "valid" for split, _ in reads), reads  # the training splits were read whole before
    valid_text = (tmp_path / "wikitext" / "wiki.valid.raw").read_text()
    texts = [data.tokenizer.decode(block) for block in blocks]
    assert {domain_of(b, data.tokenizer) for b in blocks} == {"wikitext", "docs"}
    assert all(t in valid_text or "dolor sit" in t for t in texts)


def test_a_stream_refuses_to_hold_out_part_of_its_training_split(wikitext_dir, tmp_path):
    with pytest.raises(ValueError, match=r"none of it can be held out .* set .*'data.mixture.docs.val_split'\]"):
        mixture_data(wikitext_dir, tmp_path, streaming=True).train_dataloader()
    with pytest.raises(ValueError, match=r"set \['data.val_split'\] to another split"):
        CausalLMDataModule(
            byte_tokenizer(), wikitext_dir=str(wikitext_dir), val_split="train", val_fraction=0.1, streaming=True
        )


@pytest.mark.parametrize(
    "change, message",
    [
        ({"docs": {"weight": 0}}, r"data.mixture.docs.weight must be positive"),
        ({"docs": {"shuffle": True}}, r"data.mixture.docs: unknown setting\(s\) \['shuffle'\]"),
        ({"wikitext": {"split": "test"}}, r"the test files .*wiki.test.raw.* may not be trained or validated on"),
        ({"docs": {"val_fraction": 0.0}}, r"needs data.mixture.docs.val_fraction > 0"),
    ],
)
def test_bad_mixture_settings_name_the_component(wikitext_dir, tmp_path, change, message):
    corpus = write_jsonl(tmp_path / "docs.jsonl", ["text"])
    mixture = {
        "wikitext": {"wikitext_dir": str(wikitext_dir), "split": "valid", "val_fraction": 0.1},
        "docs": {"files": {"train": str(corpus)}, "split": "train", "val_fraction": 0.2},
    }
    for name, settings in change.items():
        mixture[name].update(settings)
    with pytest.raises(ValueError, match=message):
        CausalLMDataModule(byte_tokenizer(), wikitext_dir=str(wikitext_dir), mixture=mixture)
