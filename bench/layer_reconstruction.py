"""Issue 12's lead past one-shot selection: `pruning.reconstruct` on SmolLM2-135M, layer by layer on the pruned
prefix (`calibration_mode=sequential`), with the issue's protocol and calibration budget.

What it measures: after each layer's neurons are chosen (`--selection`: activation norm, or `obs`) and its down_proj
refitted, `pruning.reconstruct` fits the layer's kept gate/up/down weights by Adam (batches of `--batch-tokens`
tokens, `--epochs` passes, learning rate `--lr` with a cosine decay) to `--target`:
- `local`: the unpruned layer's output on the layer's input;
- `carried`: what the pruned MLP must add to this block's residual stream for the block to output what the
  unpruned model's block outputs (the layers below's error is made up here too, as ZipLM / Tyr-the-Pruner carry it).
Calibration: 32,768 tokens from wiki.valid.raw (random windows drawn with `--seed`, 0 by default), cut into
`--windows` windows (64 x 512 by default, the issue's protocol; 128 gives 128 x 256); no training corpus. `--tokens`
changes the budget (`--tokens 65536 --windows 128`: twice the issue's, in windows of 512). Float32
throughout. The model keeps the plain uniform-width layout. Quality: WikiText-2 test and held-out code perplexity
(16 x 1024 windows) and the zero-shot suite.

`--calibration-mode layerwise` fits each layer on the unpruned model's inputs instead (no error carried, so the
target is `local`'s whatever `--target` says, and no block runs again to feed the next layer: the cheapest setting).
`--normalized` weighs each token's squared error by the inverse squared norm of its block's output
(`pruning.reconstruct.normalized`); `--precision bfloat16` runs the Adam steps' products under bfloat16 autocast
(`pruning.reconstruct.precision`; the model, the statistics and the errors stay float32);
`--calibration-precision bfloat16` runs the whole pruning step under bfloat16 autocast, as the default job does on a CPU
with bfloat16 instructions (the statistics passes and the target's block runs; the fit's errors stay float32).
Commands (about 30 minutes each on a 2-core CPU, a third of it the zero-shot suite; a ratio other than 0.4,
`--selection obs`, `--calibration-mode`, `--normalized`, `--precision`, `--calibration-precision`, `--windows` or
`--tokens` or `--seed` writes its own section):
    python bench/layer_reconstruction.py --target carried --epochs 6 --lr 2e-3 --zero-shot 100
    python bench/layer_reconstruction.py --target carried --epochs 6 --lr 2e-3 --normalized --zero-shot 100
    python bench/layer_reconstruction.py --ratio 0.6 --target carried --epochs 6 --lr 2e-3 --zero-shot 100
    python bench/layer_reconstruction.py --target carried --epochs 6 --lr 2e-3 --windows 128 --zero-shot 100
    python bench/layer_reconstruction.py --target carried --epochs 6 --lr 2e-3 --seed 1 --zero-shot 100
    python bench/layer_reconstruction.py --target carried --epochs 6 --lr 2e-3 --precision bfloat16 --tokens 65536 \
        --windows 128 --zero-shot 100
    python bench/layer_reconstruction.py --calibration-mode layerwise --target local --epochs 2 --zero-shot 100
    python bench/layer_reconstruction.py --target carried --epochs 6 --lr 2e-3 --precision bfloat16 --zero-shot 100
    python bench/layer_reconstruction.py --target carried --epochs 6 --lr 2e-3 --precision bfloat16 \
        --calibration-precision bfloat16 --zero-shot 100
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.domains import add_zeroshot_flags, perplexity_by_domain, protocol_evaluator, zeroshot_evaluator  # noqa: E402
from bench.markdown import machine, write_section, zeroshot_cells  # noqa: E402
from prune_recover.evaluation.tasks import ZEROSHOT_TASKS  # noqa: E402
from prune_recover.lm import forward_precision  # noqa: E402
from prune_recover.models import load_model  # noqa: E402
from prune_recover.pruning.importance import OBS_ROUND  # noqa: E402
from prune_recover.pruning.pruner import Pruner  # noqa: E402
from prune_recover.pruning.reconstruct import PRECISIONS, TARGETS, ReconstructSpec  # noqa: E402
from prune_recover.training.datamodule import CausalLMDataModule  # noqa: E402

RATIO = 0.4
CALIBRATION_TOKENS = 32_768  # issue 12's budget
WINDOWS = 64
CALIBRATION_MODES = ("sequential", "layerwise", "carried")  # those that run layer by layer, as the fit needs
SELECTIONS = {"activation": "activation", "obs": f"obs (rounds of {OBS_ROUND})"}
WIKITEXT = "../shared/data/wikitext-2-raw"


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, Pruner, object]:
    """The flags, the `Pruner` they ask for and the zero-shot evaluator; bad values stop here, before any model."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ratio", type=float, default=RATIO, help="share of MLP neurons removed (0.4: issue 12's)")
    parser.add_argument("--selection", choices=tuple(SELECTIONS), default="activation")
    parser.add_argument("--calibration-mode", choices=CALIBRATION_MODES, default="sequential")
    parser.add_argument("--target", choices=TARGETS, default=ReconstructSpec.target)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--lr", type=float, default=ReconstructSpec.lr)
    parser.add_argument("--batch-tokens", type=int, default=ReconstructSpec.batch_tokens, help="tokens per Adam step")
    parser.add_argument("--normalized", action="store_true", help="each token's error relative to its block's output")
    parser.add_argument("--precision", choices=PRECISIONS, default=ReconstructSpec.precision, help="Adam steps'")
    parser.add_argument("--calibration-precision", choices=PRECISIONS, default="float32", help="of the step")
    parser.add_argument(
        "--tokens",
        type=int,
        default=CALIBRATION_TOKENS,
        help=f"calibration tokens ({CALIBRATION_TOKENS:,}: issue 12's budget)",
    )
    parser.add_argument("--windows", type=int, default=WINDOWS, help="calibration windows the tokens are cut into")
    parser.add_argument("--seed", type=int, default=0, help="seed of the calibration windows' draw")
    parser.add_argument("--section", help="docs/BENCHMARKS.md section (default: named from the flags)")
    add_zeroshot_flags(parser, items=100)
    args = parser.parse_args(argv)
    if args.tokens < 1:
        raise SystemExit(f"bad flag: --tokens takes a whole number >= 1, got {args.tokens}")
    if not (1 <= args.windows <= args.tokens and args.tokens % args.windows == 0):
        raise SystemExit(f"bad flag: --windows must divide {args.tokens:,} calibration tokens, got {args.windows}")
    try:
        pruner = Pruner(
            importance=args.selection,
            ratio=args.ratio,
            calibration_mode=args.calibration_mode,
            reconstruct={
                "epochs": args.epochs,
                "lr": args.lr,
                "batch_tokens": args.batch_tokens,
                "target": args.target,
                "normalized": args.normalized,
                "precision": args.precision,
            },
        )
    except ValueError as error:
        raise SystemExit(f"bad flag: {error}") from error
    return args, pruner, zeroshot_evaluator(args)


def main() -> None:
    args, pruner, zeroshot = parse_args(sys.argv[1:])
    command = "python bench/layer_reconstruction.py " + " ".join(sys.argv[1:])
    model, tokenizer = load_model("smollm2-135m")
    model = model.float().eval()
    zeroshot.tokenizer = tokenizer
    spec = {"split": "valid", "num_samples": args.windows, "seq_len": seq_len(args), "batch_size": 4, "seed": args.seed}
    batches = CausalLMDataModule(tokenizer, wikitext_dir=WIKITEXT, calibration=spec).calibration_batches()
    start = time.perf_counter()
    with forward_precision(args.calibration_precision, model.device):
        event = pruner.prune(model, batches)
    seconds = time.perf_counter() - start
    ppl = perplexity_by_domain(protocol_evaluator(tokenizer, WIKITEXT), model)
    suite = zeroshot(model)
    print(ppl, suite["average"], f"{seconds:.0f} s", flush=True)
    write_section(args.section or default_section(args), markdown(command, args, event, ppl, suite, seconds))


def seq_len(args: argparse.Namespace) -> int:
    """Tokens per calibration window: the budget over `--windows`."""
    return args.tokens // args.windows


def default_section(args: argparse.Namespace) -> str:
    """`layer_reconstruction`, then `_obs` for obs selection, `_layerwise` / `_carried` for that calibration mode,
    `_normalized` for the normalized loss, `_bf16` for bfloat16 Adam steps, `_bf16pass` for a bfloat16 pruning step
    and `_NN` for a
    ratio other than 40%, then `_wN` for N calibration windows other than 64, `_tN` for N calibration tokens other than
    issue 12's 32,768 and `_seedN` for another draw."""
    section = "layer_reconstruction" + ("_obs" if args.selection == "obs" else "")
    section += "" if args.calibration_mode == "sequential" else f"_{args.calibration_mode}"
    section += "_normalized" if args.normalized else ""
    section += "_bf16" if args.precision == "bfloat16" else ""
    section += "_bf16pass" if args.calibration_precision == "bfloat16" else ""
    section += "" if args.ratio == RATIO else f"_{round(args.ratio * 100)}"
    section += "" if args.windows == WINDOWS else f"_w{args.windows}"
    section += "" if args.tokens == CALIBRATION_TOKENS else f"_t{args.tokens}"
    return section + (f"_seed{args.seed}" if args.seed else "")


def markdown(command: str, args, event, ppl: dict, suite: dict, seconds: float) -> str:
    width, error = event.intermediate_size, event.reconstruct_error
    tasks = " | ".join(ZEROSHOT_TASKS)
    return "\n".join(
        [
            f"## Per-layer reconstruction after {SELECTIONS[args.selection]} + refit at {args.ratio:.0%} "
            f"(`pruning.reconstruct`{', normalized loss' if args.normalized else ''}, issue 12)",
            "",
            f"Command: `{command}`. Measured on {machine()}; float32.",
            "",
            f"SmolLM2-135M, MLP width 1536 -> {width}, one-shot, {args.windows} x {seq_len(args)} calibration tokens "
            f"from `wiki.valid.raw` (seed {args.seed}), no training corpus; "
            f"`calibration_mode={args.calibration_mode}`, "
            f"reconstruction target `{args.target}`, "
            f"{args.epochs} epochs of Adam at {args.lr} in batches of {args.batch_tokens} tokens"
            + (", each token's error over its block output's squared norm (`normalized`)" if args.normalized else "")
            + (", the steps' products under bfloat16 autocast" if args.precision == "bfloat16" else "")
            + (
                "; the whole pruning step under bfloat16 autocast (the fit's errors in float32)"
                if args.calibration_precision == "bfloat16"
                else ""
            )
            + ". WikiText-2 test "
            "and held-out code perplexity on the scorer "
            f"table's protocol (16 x 1024 windows); the zero-shot suite on the first {args.zero_shot} items of each "
            "task. Pruning time includes the reconstruction. Mean over layers of the MLP's relative output error "
            f"against the target: {error[0]:.4f} after the refit, {error[1]:.4f} after the reconstruction.",
            "",
            f"| WikiText-2 perplexity | code perplexity | {tasks} | zero-shot average | pruning time (s) |",
            "| --- | --- | " + "--- | " * len(ZEROSHOT_TASKS) + "--- | --- |",
            f"| {ppl['wikitext2']:.2f} | {ppl['code']:.2f} | "
            + " | ".join(zeroshot_cells(suite))
            + f" | {suite['average']:.3f} | {seconds:.0f} |",
        ]
    )


if __name__ == "__main__":
    main()
