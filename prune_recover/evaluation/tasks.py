"""lm-evaluation-harness on the in-memory model, offline: the zero-shot suite and the local WikiText-2 tasks.

Needs the optional extra: `pip install -e ".[eval]"`. `TaskEvaluator` hands the model object and its
tokenizer to lm-eval's `HFLM` (no reload from disk, so a pruned or LoRA-merged model is evaluated as it
is) and resolves task names through a `TaskManager` whose include paths hold task YAMLs that read local
files only:
- `zeroshot` (a group) or any of its tasks: ARC-Easy, ARC-Challenge, PIQA, WinoGrande, BoolQ, OpenBookQA
  and LAMBADA (OpenAI) from the JSON lines in `eval.zeroshot_dir` (the YAMLs in `zeroshot_tasks/` follow
  lm-eval's own templates and metrics for each task);
- `wikitext2_cloze`, `wikitext2_title` (see `wikitext_tasks.py`).
Results keep each task's metrics with their standard errors and item counts, and the suite average of
each task's headline metric (`HEADLINE`: acc_norm for ARC-Challenge and OpenBookQA, acc elsewhere, as
LLM-Pruner and Shortened LLaMA report them).
"""

from __future__ import annotations

import functools
import hashlib
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import torch
from torch import nn

from prune_recover.data.tokens import leading_bos
from prune_recover.evaluation.wikitext_tasks import LOCAL_TASKS, build_local_tasks
from prune_recover.files import cache_root, write_text_atomic
from prune_recover.lm import eval_mode, model_device
from prune_recover.settings import check_whole_numbers

ZEROSHOT_GROUP = "zeroshot"
# Resamples for the standard errors lm-eval estimates by bootstrap (its default, 100,000, takes minutes in-process).
BOOTSTRAP_ITERS = 1000
ZEROSHOT_ENV = "PRUNE_RECOVER_ZEROSHOT"
# task -> (file in the zero-shot folder, headline metric averaged over the suite)
ZEROSHOT_TASKS = {
    "arc_easy": ("arc_easy.jsonl", "acc"),
    "arc_challenge": ("arc_challenge.jsonl", "acc_norm"),
    "piqa": ("piqa.jsonl", "acc"),
    "winogrande": ("winogrande.jsonl", "acc"),
    "boolq": ("boolq.jsonl", "acc"),
    "openbookqa": ("openbook_qa.jsonl", "acc_norm"),
    "lambada_openai": ("lambada_openai.jsonl", "acc"),
}
HEADLINE = {name: metric for name, (_, metric) in ZEROSHOT_TASKS.items()}
PREFIX = "zeroshot_"  # the suite's lm-eval task names, apart from lm-eval's hub-backed tasks of the same name


def zeroshot_include_path(data_dir: str | Path) -> Path:
    """Write the suite's task YAMLs, pointed at `data_dir`, into the cache and return that folder.

    Raises:
        FileNotFoundError: a file of the suite is missing from `data_dir`.
    """
    folder = Path(data_dir).expanduser().resolve()
    missing = [name for name, _ in ZEROSHOT_TASKS.values() if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"the zero-shot suite needs {missing} in {folder} (eval.zeroshot_dir or ${ZEROSHOT_ENV}); "
            "see ../shared/data/zero-shot/README.md for the files"
        )
    templates = resources.files("prune_recover.evaluation") / "zeroshot_tasks"
    key = hashlib.sha256(str(folder).encode()).hexdigest()[:12]
    out = cache_root() / "lm_eval_tasks" / f"zeroshot-{key}"
    out.mkdir(parents=True, exist_ok=True)
    for template in templates.iterdir():
        if template.name.endswith(".yaml"):
            # whole or not at all: lm-eval reads these while another process (a DDP rank) may be writing them
            write_text_atomic(out / template.name, template.read_text().replace("__ZEROSHOT_DIR__", str(folder)))
    return out


def headline_metric(task: str, scores: dict) -> str:
    """The metric a table shows for `task`: the suite's headline, else `acc`, else the first metric it has
    (lm-eval's own tasks may have none named `acc`: word_perplexity, exact_match...)."""
    if task in HEADLINE:
        return HEADLINE[task]
    metrics = [name for name in scores if name != "items" and not name.endswith("_stderr")]
    return "acc" if "acc" in metrics else (metrics[0] if metrics else "acc")


def metric_name(key: str) -> str:
    """lm-eval's `metric,filter` key as a metric name: the filter kept unless it is `none`, so that one task's
    metrics under several filters (gsm8k's `strict-match` and `flexible-extract`) do not overwrite each other."""
    metric, _, filter_name = key.partition(",")
    if filter_name in ("", "none"):
        return metric
    if metric.endswith("_stderr"):
        return f"{metric.removesuffix('_stderr')}/{filter_name}_stderr"
    return f"{metric}/{filter_name}"


def task_average(results: dict[str, dict]) -> float | None:
    """Mean of the headline metric over the suite's tasks present in `results` (None if none is)."""
    values = [results[name][HEADLINE[name]] for name in HEADLINE if name in results]
    return sum(values) / len(values) if values else None


@functools.lru_cache(maxsize=8)
def manager_with_lm_evals_own_tasks(include_path: tuple[str, ...] = ()):
    """lm-eval's TaskManager over its own tasks and `include_path`, built once per process and include paths (a
    session that scores several models on lm-eval's own tasks reads their index once). The manager is not changed
    by loading tasks: each load builds new task objects from the YAMLs."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=list(include_path) or None)


@dataclass
class TaskEvaluator:
    """Runs lm-eval tasks on a model object.

    Attributes:
        tokenizer: The model's tokenizer.
        tasks: Task or group names: `zeroshot` or its tasks, `wikitext2_cloze`, `wikitext2_title`, or
            lm-eval's own tasks when their data is in the local datasets cache.
        include_paths: Folders of extra task YAMLs (`zeroshot_include_path`, `build_local_tasks`).
        limit: Evaluate only the first this many items per task (None = all).
        batch_size: Requests per forward pass.
        add_bos: Start every request with BOS (True) or never (False); None leaves it to the tokenizer.
    """

    tokenizer: object
    tasks: list[str]
    include_paths: list[Path] = field(default_factory=list)
    limit: int | None = None
    batch_size: int = 8
    add_bos: bool | None = None
    _manager: object = field(default=None, init=False, repr=False)

    def task_manager(self):
        """lm-eval's TaskManager with the include paths; raises for a task name it does not know.

        lm-eval's own task index (about 15,000 YAMLs, 16 s on a 2-core CPU) is read only when a name is not one of
        the include paths' tasks, and then once per process (`manager_with_lm_evals_own_tasks`); the manager is
        built once per evaluator.
        """
        if self._manager is not None:
            return self._manager
        try:
            from lm_eval.tasks import TaskManager
        except ImportError as error:
            raise ImportError('lm-eval tasks need the optional extra: pip install -e ".[eval]"') from error
        names = self.lm_eval_names()
        include_path = tuple(str(p) for p in self.include_paths)
        manager = TaskManager(include_path=list(include_path), include_defaults=False) if include_path else None
        if manager is None or not set(names) <= set(manager.all_tasks):
            manager = manager_with_lm_evals_own_tasks(include_path)
        known = set(manager.all_tasks)
        unknown = [name for name in names if name not in known]
        if unknown:
            local = [ZEROSHOT_GROUP, *ZEROSHOT_TASKS, *LOCAL_TASKS]
            raise ValueError(
                f"eval.tasks: unknown task(s) {unknown}; offline choices: {local} (or lm-eval's own tasks)"
            )
        self._manager = manager
        return manager

    def lm_eval_names(self) -> list[str]:
        """The names handed to lm-eval (the suite's tasks carry the `zeroshot_` prefix)."""
        return [PREFIX + name if name in ZEROSHOT_TASKS else name for name in self.tasks]

    def __call__(self, model: nn.Module) -> dict:
        """`{"tasks": {task: {metric: value, metric_stderr: value, "items": n}}, "average": suite mean or None}`."""
        from lm_eval import simple_evaluate
        from lm_eval.models.huggingface import HFLM

        manager = self.task_manager()
        device = model_device(model)
        # lm-eval runs every forward under its own autocast, off unless told a dtype, which switches off the
        # caller's (Evaluator.summary's eval.precision): hand it the caller's, with the softmax kept in float32.
        autocast = torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type) else None
        # lm-eval bootstraps some standard errors (LAMBADA's perplexity) in a forked process pool, which deadlocks
        # in a process that already runs torch and W&B threads: bootstrap in this process instead, 1000 draws.
        os.environ.setdefault("DISABLE_MULTIPROC", "1")
        with eval_mode(model):
            lm = HFLM(
                pretrained=model,
                tokenizer=self.tokenizer,
                device=str(device),
                batch_size=self.batch_size,
                add_bos_token=self.add_bos,
                mixed_precision_dtype=autocast,
                softmax_dtype=torch.float32 if autocast is not None else None,
            )
            output = simple_evaluate(
                model=lm,
                tasks=self.lm_eval_names(),
                task_manager=manager,
                limit=self.limit,
                log_samples=False,
                bootstrap_iters=BOOTSTRAP_ITERS,
            )
        results = {}
        for name, metrics in output["results"].items():
            if name not in output["n-samples"]:
                continue  # a group's own row (its tasks have their own rows; the suite's average is task_average)
            scores = {metric_name(key): value for key, value in metrics.items() if isinstance(value, float)}
            scores["items"] = output["n-samples"][name]["effective"]
            results[name.removeprefix(PREFIX)] = scores
        return {"tasks": results, "average": task_average(results)}


def build_task_evaluator(
    tokenizer,
    tasks: list[str],
    zeroshot_dir: str | Path | None = None,
    wikitext_test: str | Path | None = None,
    limit: int | None = None,
    batch_size: int = 8,
    add_bos: bool | None = None,
) -> TaskEvaluator:
    """A `TaskEvaluator` with the include paths its tasks need, checked now (before any weights load).

    Raises:
        FileNotFoundError: the zero-shot files or the WikiText-2 test file are missing.
        ValueError: a task name lm-eval does not know, a bad limit or batch size, or BOS asked of a tokenizer
            that does not add it.
    """
    counts = {"eval.task_batch_size": (batch_size, 1)}
    if limit is not None:  # null = every item
        counts["eval.task_limit"] = (limit, 1)
    check_whole_numbers(counts)
    if add_bos and leading_bos("auto", tokenizer) is None:
        raise ValueError(
            "data.bos=true, but lm-eval adds BOS only through the tokenizer, and this one does not put it first: "
            "the tasks would be scored without it. Use data.bos=auto or false with eval.tasks"
        )
    include_paths = []
    if set(tasks) & {ZEROSHOT_GROUP, *ZEROSHOT_TASKS}:
        include_paths.append(zeroshot_include_path(zeroshot_dir or os.environ.get(ZEROSHOT_ENV, "")))
    if set(tasks) & set(LOCAL_TASKS):
        if wikitext_test is None:
            raise ValueError(f"the local tasks {LOCAL_TASKS} are built from a local WikiText-2 test file")
        include_paths.append(build_local_tasks(wikitext_test))
    evaluator = TaskEvaluator(tokenizer, list(tasks), include_paths, limit, batch_size, add_bos)
    evaluator.task_manager()  # unknown names fail here
    return evaluator
