"""Deployment metrics of a causal LM: time to first token, decode speed, batch throughput, peak memory.

    python -m prune_recover.deploy measure MODEL [--device cpu] [--json out.json]
    python -m prune_recover.deploy compare BASE PRUNED [--json out.json]

MODEL is anything `load_model` accepts (`smollm2-135m`, a saved directory, ...). Prompts are random
token ids (speed does not depend on their content). Each figure is the median of `--repeats` runs
after one warm-up run. Decoding is greedy, one token per step with a KV cache, timed apart from the
prefill. Memory is reported twice: the bytes of the weights, and the peak while the measured
inference ran (CUDA: max allocated; CPU on Linux: the process's peak resident set, reset once the
model is loaded so that the transient copies of loading do not count; it includes the Python and
torch runtime). `compare` (`deploy_compare.py`) measures each model in its own subprocess so that these
figures belong to that model alone, alternating the two `--rounds` times, and relates the speed-ups to the
reduction in matmul FLOPs per token.
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import statistics
import time
from pathlib import Path

import torch
from transformers import PretrainedConfig

from prune_recover.evaluation.deploy_compare import compare, markdown
from prune_recover.lm import count_parameters, model_device


def flops_per_token(config: PretrainedConfig, params: int, context: int) -> float:
    """Matmul FLOPs to process one token with `context` tokens in the KV cache.

    2 x every weight a token is multiplied by (all parameters but the embedding table, plus the
    LM head, which a tied model shares with the table) + 4 x layers x context x attention width
    for the score and value products. Norms and activations are ignored.
    """
    # The lookup table does no matmul, the LM head does: a tied model counts the shared matrix once,
    # an untied one counts the table and the head, of which only the head multiplies.
    embedding = config.vocab_size * config.hidden_size
    weights = params if config.tie_word_embeddings else params - embedding
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    attention = 4 * config.num_hidden_layers * context * config.num_attention_heads * head_dim
    return 2 * weights + attention


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_time(fn, device: torch.device, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    elif Path("/proc/self/clear_refs").exists():
        Path("/proc/self/clear_refs").write_text("5")  # Linux: resets the peak resident set (VmHWM)


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    status = Path("/proc/self/status")
    if status.exists():
        return int(re.search(r"VmHWM:\s+(\d+) kB", status.read_text()).group(1)) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # macOS: bytes, peak since start


def weights_mb(model) -> float:
    """Bytes held by the parameters and buffers of `model`, in MiB (a tied matrix counted once)."""
    tensors = {t.data_ptr(): t for t in [*model.parameters(), *model.buffers()]}
    return sum(t.numel() * t.element_size() for t in tensors.values()) / 2**20


@torch.no_grad()
def _decode(model, prompt: torch.Tensor, new_tokens: int) -> None:
    """Greedy decoding of `new_tokens` tokens after a prefill, one token per forward pass."""
    output = model(input_ids=prompt, use_cache=True)
    token = output.logits[:, -1:].argmax(-1)
    past = output.past_key_values
    for _ in range(new_tokens - 1):
        output = model(input_ids=token, past_key_values=past, use_cache=True)
        token, past = output.logits[:, -1:].argmax(-1), output.past_key_values


@torch.no_grad()
def measure(
    model,
    prompt_lengths: tuple[int, ...] = (128, 512, 1024),
    new_tokens: int = 64,
    batch_size: int = 8,
    repeats: int = 3,
) -> dict:
    """Speed figures of `model` on its current device (see the module docstring)."""
    device = model_device(model)
    model.eval()
    generator = torch.Generator().manual_seed(0)
    vocab = model.config.vocab_size

    def prompt(batch: int, length: int) -> torch.Tensor:
        return torch.randint(0, vocab, (batch, length), generator=generator).to(device)

    result = {"params": count_parameters(model), "device": str(device), "new_tokens": new_tokens, "prompts": {}}
    result["weights_mb"] = weights_mb(model)
    _reset_peak_memory(device)
    for length in prompt_lengths:
        ids = prompt(1, length)
        prefill = _median_time(lambda ids=ids: model(input_ids=ids, use_cache=True), device, repeats)
        total = _median_time(lambda ids=ids: _decode(model, ids, new_tokens), device, repeats)
        result["prompts"][str(length)] = {
            "ttft_ms": 1000 * prefill,
            "decode_tokens_per_s": (new_tokens - 1) / max(total - prefill, 1e-9),
            "flops_per_token": flops_per_token(model.config, result["params"], length),
        }
    ids = prompt(batch_size, prompt_lengths[0])
    batch_time = _median_time(lambda: _decode(model, ids, new_tokens), device, repeats)
    result["batch"] = {
        "batch_size": batch_size,
        "prompt_length": prompt_lengths[0],
        "tokens_per_s": batch_size * new_tokens / batch_time,
    }
    result["peak_memory_mb"] = _peak_memory_mb(device)
    return result


def main(argv: list[str] | None = None) -> None:
    """Command line: `measure MODEL` or `compare BASE PRUNED` (see the module docstring)."""
    parser = argparse.ArgumentParser(description="Deployment metrics of causal LMs.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("measure", "compare"):
        command = sub.add_parser(name)
        command.add_argument("models", nargs=1 if name == "measure" else 2)
        command.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
        command.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
        command.add_argument("--prompt-lengths", type=int, nargs="+", default=[128, 512, 1024])
        command.add_argument("--new-tokens", type=int, default=64)
        command.add_argument("--batch-size", type=int, default=8)
        command.add_argument("--repeats", type=int, default=3)
        command.add_argument("--json", type=Path, default=None, help="also write the result here")
        if name == "compare":
            command.add_argument("--rounds", type=int, default=3, help="alternating base/pruned measurements")
    args = parser.parse_args(argv)
    if args.command == "measure":
        from prune_recover.models import load_model

        model, _ = load_model(args.models[0], dtype=args.dtype)
        result = measure(
            model.to(args.device), tuple(args.prompt_lengths), args.new_tokens, args.batch_size, args.repeats
        )
        result["model"] = args.models[0]
    else:
        extra = [
            "--device",
            args.device,
            "--dtype",
            args.dtype,
            "--new-tokens",
            str(args.new_tokens),
            "--batch-size",
            str(args.batch_size),
            "--repeats",
            str(args.repeats),
            "--prompt-lengths",
            *map(str, args.prompt_lengths),
        ]
        result = compare(*args.models, extra, args.rounds)
        print(markdown(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
