"""A study's table: one row per run (method, size, perplexity per domain, zero-shot average, recovery tokens,
wall time) from its `pruning_report.json`, and the rows as Markdown."""

from __future__ import annotations


def method_of(report: dict) -> str:
    """`<width|depth-criterion> + <recovery>` label of a run."""
    events = report.get("events") or []
    removed = [e for e in events if e.get("removed_blocks")]
    pruning = (
        f"depth ({removed[0]['depth_criterion']})"
        if removed
        else f"width ({events[0]['importance']})"
        if events
        else "none"
    )
    return f"{pruning} + {report.get('recovery', {}).get('method', 'none')}"


def held_out_domains(report: dict) -> dict[str, float]:
    """`{"<domain>@<len>": ppl}` of the final model on every scored domain besides the headline one, at its
    longest window length (e.g. `code@1024` with `eval=wikitext2_code`)."""
    headline = report.get("config", {}).get("eval", {}).get("test_name", "wikitext2")
    figures = {}
    for domain, by_len in report["final"].get("ppl_by_domain", {}).items():
        if domain != headline and by_len:
            longest = max(by_len, key=int)
            figures[f"{domain}@{longest}"] = by_len[longest]
    return figures


def rows(reports: list[dict]) -> list[dict]:
    """One table row per run: method, size, perplexities (headline and other domains), zero-shot average,
    recovery tokens, wall time; largest first. Every row has the same keys (None where a run lacks a figure)."""
    held_out = [held_out_domains(report) for report in reports]
    domains = sorted({key for figures in held_out for key in figures})
    table = []
    for report, figures in zip(reports, held_out, strict=True):
        final = report["final"]
        by_len = final.get("ppl_by_seq_len", {})
        table.append(
            {
                "run": report["name"],
                "method": method_of(report),
                "params": final["params"],
                "pruned": 1 - final["params"] / report["base"]["params"],
                "ppl@128": by_len.get("128"),
                "ppl@1024": by_len.get("1024"),
                **{key: figures.get(key) for key in domains},
                "zeroshot_average": final.get("task_average"),
                "after_pruning@128": (report["events"] or [{}])[-1].get("ppl_after_by_seq_len", {}).get("128"),
                "recovery_tokens": report.get("recovery", {}).get("tokens_seen", 0),
                "wall_s": report.get("wall_seconds"),
            }
        )
    return sorted(table, key=lambda r: (-r["params"], r["method"]))


def _fmt(value, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def markdown_table(table: list[dict]) -> str:
    """The rows as a Markdown table (a column for each other domain, and the zero-shot average when scored)."""
    # the held-out domains' columns: the `"<domain>@<len>"` keys besides the headline's and the after-pruning one
    domains = [key for key in table[0] if "@" in key and not key.startswith(("ppl@", "after_pruning@"))]
    zeroshot = any(r["zeroshot_average"] is not None for r in table)
    header = ["run", "method", "params", "pruned", "ppl@128 after pruning", "ppl@128", "ppl@1024"]
    header += [f"{key.split('@')[0]} ppl@{key.split('@')[1]}" for key in domains]
    header += ["zero-shot average"] * zeroshot + ["recovery tokens", "wall time (s)"]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for r in table:
        cells = [r["run"], r["method"], f"{r['params']:,}", f"{r['pruned']:.1%}", _fmt(r["after_pruning@128"], ".2f")]
        cells += [_fmt(r[key], ".2f") for key in ("ppl@128", "ppl@1024", *domains)]
        cells += [_fmt(r["zeroshot_average"], ".3f")] * zeroshot
        cells += [f"{r['recovery_tokens']:,}", _fmt(r["wall_s"], ".0f")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
