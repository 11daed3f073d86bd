"""Two multiple-choice lm-eval tasks generated from the WikiText-2 **test** split (evaluation only, never trained on).

- `wikitext2_cloze`: a paragraph's first 30 words; choose its true next 10 words among 4
  (3 distractors are 10-word spans of paragraphs from other articles). Chance: 25%.
- `wikitext2_title`: a paragraph's first 40 words; choose the title of its article among 4. Chance: 25%.

The items and their task YAMLs are written once into the cache, under a key of the test file's path, size and
modification time, the item count, the seed and `FORMAT`; `build_local_tasks` returns the folder to hand lm-eval
as an include path. Choices carry no leading space: lm-eval joins context and choice with its `target_delimiter`,
a space (with one of their own, every request held two).
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from pathlib import Path

from prune_recover.files import cache_root, write_text_atomic

LOCAL_TASKS = ("wikitext2_cloze", "wikitext2_title")
# Bumped when the items or YAMLs change, so that a cache written by older code is not read as current.
FORMAT = 2
_TITLE = re.compile(r"^ = ([^=].*?) = $")

_TASK_YAML = """task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{context}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{label}}}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
"""


def _articles(text: str) -> list[tuple[str, list[list[str]]]]:
    """(title, paragraphs as word lists) for every article of a WikiText raw file."""
    articles: list[tuple[str, list[list[str]]]] = []
    for line in text.splitlines():
        title = _TITLE.match(line)
        if title:
            articles.append((title.group(1).strip(), []))
        elif articles and not line.strip().startswith("=") and len(line.split()) >= 45:
            articles[-1][1].append(line.split())
    return [(title, paragraphs) for title, paragraphs in articles if paragraphs]


def build_local_tasks(wikitext_test: str | Path, num_items: int = 200, seed: int = 0) -> Path:
    """Write the local tasks' data and YAMLs (once, into the cache) and return their include path."""
    source = Path(wikitext_test)
    if not source.is_file():
        raise FileNotFoundError(f"WikiText-2 test file not found: {source}")
    stat = source.stat()
    where = hashlib.sha256(str(source.resolve()).encode()).hexdigest()[:12]
    key = f"v{FORMAT}-{where}-{stat.st_size}-{stat.st_mtime_ns}-{num_items}-{seed}"
    folder = cache_root() / "lm_eval_tasks" / key
    if all((folder / f"{name}.yaml").is_file() for name in LOCAL_TASKS):
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    articles = _articles(source.read_text(encoding="utf-8"))
    if len(articles) < 4:
        raise ValueError(f"{source} holds {len(articles)} usable articles; the local tasks need at least 4")
    rng = random.Random(seed)
    items = {"wikitext2_cloze": [], "wikitext2_title": []}
    for _ in range(num_items):
        index = rng.randrange(len(articles))
        title, paragraphs = articles[index]
        words = rng.choice(paragraphs)
        others = rng.sample([a for i, a in enumerate(articles) if i != index], 3)
        distractor_spans = []
        for _, other_paragraphs in others:
            other = rng.choice(other_paragraphs)
            start = rng.randrange(0, len(other) - 10)
            distractor_spans.append(" ".join(other[start : start + 10]))
        items["wikitext2_cloze"].append(_item(" ".join(words[:30]), " ".join(words[30:40]), distractor_spans, rng))
        passage = " ".join(words[:40]) + "\nThis passage is from the article titled:"
        items["wikitext2_title"].append(_item(passage, title, [t for t, _ in others], rng))
    # Each file whole or absent (ranks of a DDP job build the same folder at once); the YAMLs, which the check
    # above looks for, after their data.
    for name, rows in items.items():
        data = folder / f"{name}.jsonl"
        write_text_atomic(data, "".join(json.dumps(row) + "\n" for row in rows))
        write_text_atomic(folder / f"{name}.yaml", _TASK_YAML.format(name=name, data=json.dumps(str(data))))
    return folder


def _item(context: str, answer: str, distractors: list[str], rng: random.Random) -> dict:
    choices = [answer, *distractors]
    rng.shuffle(choices)
    return {"context": context, "choices": choices, "label": choices.index(answer)}
