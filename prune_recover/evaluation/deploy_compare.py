"""Base against pruned: each model measured in its own process by `python -m prune_recover.deploy measure`,
the two alternating over several rounds (this machine's speed drifts between rounds), then related.

Each model's figures are medians over its runs; each speed-up is the median over rounds of the ratio taken
within one round, and is set beside the reduction in matmul FLOPs per token (`deploy.flops_per_token`).
"""

from __future__ import annotations

import copy
import json
import statistics
import subprocess
import sys


def compare(base: str, pruned: str, extra: list[str], rounds: int = 3) -> dict:
    """Measure two models, each in a fresh subprocess, alternating (base, pruned, base, ...) `rounds` times, and
    relate the speed-ups to the FLOP reductions (`relate`)."""
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    runs = {"base": [], "pruned": []}
    for _ in range(rounds):
        for name, model in (("base", base), ("pruned", pruned)):
            out = subprocess.run(
                [sys.executable, "-m", "prune_recover.deploy", "measure", model, *extra],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            runs[name].append(json.loads(out.strip().splitlines()[-1]))
    return relate(runs["base"], runs["pruned"])


def relate(base_runs: list[dict], pruned_runs: list[dict]) -> dict:
    """Each model's figures as medians over its runs, and each speed-up as the median over rounds of the ratio
    measured within one round (runs paired in order): the machine's speed drifts between rounds, a ratio taken
    side by side does not."""
    pairs = list(zip(base_runs, pruned_runs, strict=True))

    def speedup(figure) -> float:
        return statistics.median(figure(pruned) / figure(base) for base, pruned in pairs)

    results = {"base": _median_run(base_runs), "pruned": _median_run(pruned_runs), "rounds": len(pairs), "ratios": {}}
    for length, base_prompt in results["base"]["prompts"].items():
        results["ratios"][length] = {
            "decode_speedup": speedup(lambda run, n=length: run["prompts"][n]["decode_tokens_per_s"]),
            "ttft_speedup": speedup(lambda run, n=length: 1 / run["prompts"][n]["ttft_ms"]),
            "flop_reduction": base_prompt["flops_per_token"] / results["pruned"]["prompts"][length]["flops_per_token"],
        }
    results["batch_speedup"] = speedup(lambda run: run["batch"]["tokens_per_s"])
    return results


def _median_run(runs: list[dict]) -> dict:
    """The first run's record with every timing and the peak memory replaced by their medians over `runs`."""
    merged = copy.deepcopy(runs[0])
    for length, prompt in merged["prompts"].items():
        for key in ("ttft_ms", "decode_tokens_per_s"):
            prompt[key] = statistics.median(run["prompts"][length][key] for run in runs)
    merged["batch"]["tokens_per_s"] = statistics.median(run["batch"]["tokens_per_s"] for run in runs)
    merged["peak_memory_mb"] = statistics.median(run["peak_memory_mb"] for run in runs)
    return merged


def markdown(results: dict) -> str:
    """A table of base vs pruned figures and the speed-up against the FLOP reduction."""
    lines = [
        "| prompt | TTFT base (ms) | TTFT pruned (ms) | decode base (tok/s) | decode pruned (tok/s) | decode speed-up "
        "| TTFT speed-up | FLOP reduction |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for length, ratio in results["ratios"].items():
        base, pruned = results["base"]["prompts"][length], results["pruned"]["prompts"][length]
        lines.append(
            f"| {length} | {base['ttft_ms']:.1f} | {pruned['ttft_ms']:.1f} | {base['decode_tokens_per_s']:.1f} | "
            f"{pruned['decode_tokens_per_s']:.1f} | {ratio['decode_speedup']:.2f}x | {ratio['ttft_speedup']:.2f}x | "
            f"{ratio['flop_reduction']:.2f}x |"
        )
    b, p = results["base"], results["pruned"]
    lines += [
        "",
        f"Figures: medians over {results['rounds']} rounds, base and pruned alternating, each in a fresh process; "
        "speed-ups: the median over rounds of the ratio measured within a round.",
        f"Batch throughput (batch {b['batch']['batch_size']}, prompt {b['batch']['prompt_length']}, "
        f"{b['new_tokens']} new tokens): base {b['batch']['tokens_per_s']:.1f} tok/s, pruned "
        f"{p['batch']['tokens_per_s']:.1f} tok/s ({results['batch_speedup']:.2f}x).",
        f"Weights: base {b['weights_mb']:.0f} MiB, pruned {p['weights_mb']:.0f} MiB. "
        f"Peak memory while measuring: base {b['peak_memory_mb']:.0f} MiB, pruned {p['peak_memory_mb']:.0f} MiB. "
        f"Parameters: base {b['params']:,}, pruned {p['params']:,}.",
    ]
    return "\n".join(lines)
