"""The 8B recipe's per-GPU memory plan, on Llama-3.1-8B's shapes (config only: the hub is not reachable here).

Command:
    python bench/memory_plan.py
It writes Llama-3.1-8B's config (hidden 4096, MLP 14336, 32 layers, 32/8 heads, vocabulary 128256, untied)
to a temporary folder and prints `python -m prune_recover.plan --gpus 8 --gpu-memory 80 recipe=medit8b_to_4b8
model.name=<that folder>` as the recipe runs it (FSDP, float32 masters) and with `trainer=ddp`.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from transformers import LlamaConfig  # noqa: E402

from bench.markdown import write_section  # noqa: E402
from prune_recover.jobs.configs import compose_train_config  # noqa: E402
from prune_recover.jobs.memory_plan import memory_plan  # noqa: E402

COMMAND = "python bench/memory_plan.py"


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        LlamaConfig(
            hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
            num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=False, rope_theta=500000.0,
        ).save_pretrained(folder)  # fmt: skip
        common = ["recipe=medit8b_to_4b8", f"model.name={folder}"]
        sharded = memory_plan(compose_train_config(common), gpus=8, gpu_memory_gib=80)
        replicated = memory_plan(compose_train_config([*common, "trainer=ddp"]), gpus=8, gpu_memory_gib=80)
    body = "\n".join(
        [
            "## Memory plan of the 8B recipe (`python -m prune_recover.plan`)",
            "",
            f"Command: `{COMMAND}` (Llama-3.1-8B's config; no weights are read). Estimates, in GiB per GPU.",
            "",
            "As the recipe runs (FSDP full shard over 8 GPUs, bf16 compute, float32 master weights and AdamW):",
            "",
            sharded.table(),
            "",
            "The same with `trainer=ddp` (every GPU holds the whole float32 model and its optimizer):",
            "",
            replicated.table(),
            "",
            "Hand check: 4,809,035,776 parameters x 4 bytes = 17.9 GiB, / 8 shards = 2.24 GiB (weights, and again "
            "for gradients, twice for AdamW); 8,030,261,248 x 2 bytes = 15.0 GiB for the unpruned bf16 model "
            "on each GPU while step 0 prunes it; logits 4 x 2048 x 128,256 x 8 bytes = 7.8 GiB.",
        ]
    )
    write_section("memory_plan", body)
    print(body)


if __name__ == "__main__":
    main()
