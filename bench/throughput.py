"""Training throughput: RecoveryModule under a Lightning Trainer against a plain PyTorch loop.

Same model (SmolLM2-135M, 40% of MLP neurons removed by `maw`, so no calibration is needed),
same batches, same precision, AdamW + gradient clipping 1.0 in both. Each side runs `--steps`
optimizer steps; the first `--warmup` steps are excluded from the timing. The two sides alternate
`--repeats` times and the median tokens/s of each is reported.

Command:
    python bench/throughput.py
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from functools import partial
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.markdown import machine, write_section  # noqa: E402
from prune_recover.models import load_model  # noqa: E402
from prune_recover.pruning.pruner import Pruner  # noqa: E402
from prune_recover.training.recovery_module import RecoveryModule  # noqa: E402

COMMAND = "python bench/throughput.py"


class StepTimer(L.Callback):
    """Tokens per second from the end of step `warmup` to the end of the last step: the fit's teardown (moving the
    model and optimizer states off the GPU) is not counted, and each end waits for the GPU's queued work."""

    def __init__(self, warmup: int):
        self.warmup, self.start, self.end, self.tokens = warmup, None, None, 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        now = time.perf_counter()
        if trainer.global_step == self.warmup:
            self.start = now
        elif trainer.global_step > self.warmup:
            self.tokens, self.end = self.tokens + batch["input_ids"].numel(), now

    def tokens_per_s(self) -> float:
        return self.tokens / (self.end - self.start)


def batches(blocks: torch.Tensor, batch_size: int) -> DataLoader:
    """The blocks as the datamodule serves them (`{"input_ids": [batch, seq_len]}`), for both loops."""
    return DataLoader([{"input_ids": block} for block in blocks], batch_size=batch_size)


def lightning_run(model, blocks, args) -> float:
    module = RecoveryModule(copy.deepcopy(model), optimizer=partial(torch.optim.AdamW, lr=1e-5))
    timer = StepTimer(args.warmup)
    trainer = L.Trainer(
        accelerator=args.accelerator,
        devices=1,
        precision=args.precision,
        max_steps=args.steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        gradient_clip_val=1.0,
        callbacks=[timer],
        limit_val_batches=0,
    )
    trainer.fit(module, batches(blocks, args.batch_size))
    return timer.tokens_per_s()


def plain_run(model, blocks, args) -> float:
    device = torch.device("cuda" if args.accelerator == "gpu" else "cpu")
    model = copy.deepcopy(model).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16-mixed")
    start, tokens = None, 0
    for step, batch in enumerate(batches(blocks, args.batch_size)):
        if step == args.steps:
            break
        batch = batch["input_ids"].to(device)
        with autocast:
            loss = model(input_ids=batch, labels=batch, use_cache=False).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if step + 1 == args.warmup:
            start = time.perf_counter()
        elif step + 1 > args.warmup:
            tokens += batch.numel()
    return tokens / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accelerator", default="cpu", choices=["cpu", "gpu"])
    parser.add_argument("--precision", default="32-true", choices=["32-true", "bf16-mixed"])
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    model, _ = load_model("smollm2-135m")
    Pruner(importance="maw", ratio=0.4, refit=False).prune(model)
    generator = torch.Generator().manual_seed(0)
    shape = (args.steps * args.batch_size, args.seq_len)
    blocks = torch.randint(0, model.config.vocab_size, shape, generator=generator)
    results = {"lightning": [], "plain": []}
    for _ in range(args.repeats):
        results["plain"].append(plain_run(model, blocks, args))
        results["lightning"].append(lightning_run(model, blocks, args))
        print({k: [round(v, 1) for v in values] for k, values in results.items()}, flush=True)
    plain, lightning = statistics.median(results["plain"]), statistics.median(results["lightning"])
    command = COMMAND + ("" if args.accelerator == "cpu" else f" --accelerator gpu --precision {args.precision}")
    where = machine(device="cuda" if args.accelerator == "gpu" else "cpu")
    body = "\n".join(
        [
            f"## Training throughput: LightningModule vs plain PyTorch ({args.accelerator}, {args.precision})",
            "",
            f"Command: `{command}`. Measured on {where}.",
            "",
            f"SmolLM2-135M pruned 40% (maw), batch {args.batch_size} x {args.seq_len} tokens, AdamW, clip 1.0, "
            f"{args.steps} steps ({args.warmup} warm-up steps not timed), median of {args.repeats} alternating runs.",
            "",
            "| loop | tokens/s (median) | runs |",
            "| --- | --- | --- |",
            f"| plain PyTorch | {plain:.1f} | {', '.join(f'{v:.1f}' for v in results['plain'])} |",
            f"| RecoveryModule + Trainer | {lightning:.1f} | {', '.join(f'{v:.1f}' for v in results['lightning'])} |",
            "",
            f"Ratio Lightning / plain: **{lightning / plain:.3f}** (target >= 0.95).",
        ]
    )
    write_section(f"throughput_{args.accelerator}", body)
    print(body)


if __name__ == "__main__":
    main()
