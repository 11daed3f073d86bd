"""Deployment metrics of SmolLM2-135M against its 40% MLP-pruned version on this machine.

Command:
    python bench/deployment.py
The pruned model is the default pruning (activation + refit, 40% of MLP neurons; speed does not
depend on which neurons are kept, so any 40% model of the same shape measures the same). Each model
is measured in its own process by `python -m prune_recover.deploy compare` (prompt lengths 128,
512, 1024; 64 new tokens greedy with KV cache; batch 8 for throughput; median of 3 after a warm-up), base and
pruned alternating in 3 rounds; each speed-up is the median of the ratios taken within a round.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.markdown import machine, write_section  # noqa: E402
from prune_recover.evaluation import deploy_compare  # noqa: E402
from prune_recover.models import load_model, resolve_source, save_pretrained_atomic  # noqa: E402
from prune_recover.pruning.pruner import Pruner  # noqa: E402
from prune_recover.training.datamodule import CausalLMDataModule  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--wikitext-dir", default="../shared/data/wikitext-2-raw")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model, tokenizer = load_model("smollm2-135m")
        data = CausalLMDataModule(tokenizer, wikitext_dir=args.wikitext_dir, calibration={"split": "valid"})
        Pruner(importance="activation", ratio=0.4).prune(model, data.calibration_batches())
        save_pretrained_atomic(model, tokenizer, Path(tmp) / "pruned")
        flags = ["--device", args.device, "--dtype", args.dtype, "--repeats", "3"]
        results = deploy_compare.compare(resolve_source("smollm2-135m"), str(Path(tmp) / "pruned"), flags, rounds=3)
    table = deploy_compare.markdown(results)
    command = "python bench/deployment.py" + (
        "" if args.device == "cpu" else f" --device {args.device} --dtype {args.dtype}"
    )
    body = "\n".join(
        [
            f"## Deployment: SmolLM2-135M vs 40% MLP-pruned ({args.device}, {args.dtype})",
            "",
            f"Command: `{command}`. Measured on {machine(device=args.device)}.",
            "",
            "TTFT = prefill of one prompt (batch 1); decode = greedy tokens/s with KV cache after the prefill "
            "(64 new tokens); FLOP reduction = matmul FLOPs per token at that context, base / pruned "
            "(`prune_recover.deploy.flops_per_token`).",
            "",
            table,
        ]
    )
    write_section(f"deployment_{args.device}", body)
    print(body)


if __name__ == "__main__":
    main()
