import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Config

from prune_recover.arch import UnsupportedModelError
from prune_recover.models import (
    UnknownModelError,
    load_config,
    load_model,
    resolve_source,
    save_pretrained_atomic,
)
from prune_recover.tiny_models import byte_tokenizer, tiny_random


def test_unknown_name_lists_what_is_accepted():
    with pytest.raises(UnknownModelError, match=r"Unknown model 'smollm3'.*smollm2-135m, tiny-random.*org/name"):
        load_model("smollm3")


def test_missing_files_and_directories(tmp_path):
    with pytest.raises(FileNotFoundError, match="GGUF file not found"):
        load_model(str(tmp_path / "model.gguf"))
    with pytest.raises(FileNotFoundError, match="Model path not found"):
        load_model(str(tmp_path / "absent"))
    with pytest.raises(FileNotFoundError, match="holds no config.json"):
        load_model(str(tmp_path))


def test_uncached_hub_id_offline_is_a_clear_error():
    with pytest.raises(FileNotFoundError, match="not in the local Hugging Face cache"):
        load_config("prune-recover-tests/does-not-exist")


def test_non_glu_model_fails_before_reading_weights(tmp_path):
    GPT2Config(n_layer=2, n_embd=32, n_head=2).save_pretrained(tmp_path)  # config only, no weights at all
    with pytest.raises(UnsupportedModelError, match="gpt2.*Supported families"):
        load_model(str(tmp_path))


def test_bad_dtype():
    with pytest.raises(ValueError, match="dtype 'fp8' is not supported"):
        load_model("tiny-random", dtype="fp8")


def test_local_directory_roundtrip(tmp_path):
    model, tokenizer = tiny_random("qwen2")
    save_pretrained_atomic(model, tokenizer, tmp_path / "m")
    loaded, loaded_tokenizer = load_model(str(tmp_path / "m"))
    tokens = torch.tensor([[5, 6, 7]])
    with torch.no_grad():
        torch.testing.assert_close(loaded(tokens).logits, model(tokens).logits)
    assert loaded_tokenizer("abc")["input_ids"] == tokenizer("abc")["input_ids"]


class _FailingTokenizer:
    def save_pretrained(self, path):
        raise OSError("disk full")


def test_atomic_save_keeps_the_previous_export_when_writing_fails(tmp_path):
    model, tokenizer = tiny_random("llama")
    target = save_pretrained_atomic(model, tokenizer, tmp_path / "final")
    before = json.loads((target / "config.json").read_text())
    with pytest.raises(OSError, match="disk full"):
        save_pretrained_atomic(tiny_random("llama", intermediate_size=64)[0], _FailingTokenizer(), target)
    assert json.loads((target / "config.json").read_text()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final"]
    AutoModelForCausalLM.from_pretrained(target)


def test_a_cache_entry_another_writer_published_first_is_kept_under_its_readers(tmp_path):
    model, tokenizer = tiny_random("llama")
    first = save_pretrained_atomic(model, tokenizer, tmp_path / "converted", replace=False)
    inode = (first / "config.json").stat().st_ino
    # a second rank finishing the same conversion: no error, the first one's files stay (a reader may hold them)
    again = save_pretrained_atomic(tiny_random("llama", intermediate_size=64)[0], tokenizer, first, replace=False)
    assert again == first and (first / "config.json").stat().st_ino == inode
    assert AutoModelForCausalLM.from_pretrained(first).config.intermediate_size == 128
    assert sorted(p.name for p in tmp_path.iterdir()) == ["converted"]


def test_byte_tokenizer_round_trips_any_text():
    tokenizer = byte_tokenizer()
    text = " = Valkyria Chronicles III = \n café — 日本"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(text.encode()) and tokenizer.decode(ids) == text


@pytest.mark.real_model
def test_bundled_smollm2_is_converted_once_then_loads_fast():
    converted = Path(resolve_source("smollm2-135m"))
    written = (converted / "model.safetensors").stat().st_mtime_ns
    model, tokenizer = load_model("smollm2-135m")
    assert Path(resolve_source("smollm2-135m")) == converted
    assert (converted / "model.safetensors").stat().st_mtime_ns == written  # read from the cache, not re-converted
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert (model.config.num_hidden_layers, model.config.hidden_size, model.config.intermediate_size) == (30, 576, 1536)
    assert "quantization_config" not in model.config.to_dict()
    assert tokenizer.decode(tokenizer(" The cat")["input_ids"]) == " The cat"
