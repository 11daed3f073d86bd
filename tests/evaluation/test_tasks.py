"""lm-eval on the in-memory model, offline: the zero-shot suite (prompts identical to lm-eval's own tasks) and
the local WikiText-2 tasks."""

import json

import pytest
import torch
import yaml

from prune_recover.evaluation.evaluator import Evaluator
from prune_recover.evaluation.tasks import (
    HEADLINE,
    ZEROSHOT_TASKS,
    TaskEvaluator,
    build_task_evaluator,
    manager_with_lm_evals_own_tasks,
    metric_name,
    zeroshot_include_path,
)
from prune_recover.evaluation.wikitext_tasks import LOCAL_TASKS, build_local_tasks
from prune_recover.tiny_models import byte_tokenizer, tiny_random
from tests.conftest import REPO

lm_eval = pytest.importorskip("lm_eval", reason='the lm-eval bridge needs pip install -e ".[eval]"')
ZEROSHOT_DIR = REPO.parent / "shared" / "data" / "zero-shot"
LABELS = "ABCDE"


def as_lm_eval_doc(task: str, item: dict) -> dict:
    """The hub record (the format lm-eval's own task reads) that a local zero-shot item was made from."""
    if task in ("arc_easy", "arc_challenge", "openbookqa"):
        labels = list(LABELS[: len(item["choices"])])
        choices = {"text": item["choices"], "label": labels}
        if task == "openbookqa":
            return {"question_stem": item["query"], "choices": choices, "answerKey": labels[item["gold"]]}
        return {
            "question": item["query"].removeprefix("Question: "),
            "choices": choices,
            "answerKey": labels[item["gold"]],
        }
    if task == "piqa":
        goal = item["query"].removeprefix("Question: ").removesuffix("\n")
        return {"goal": goal, "sol1": item["choices"][0], "sol2": item["choices"][1], "label": item["gold"]}
    if task == "boolq":
        passage, question = item["query"].removeprefix("Passage: ").rsplit("\nQuestion: ", 1)
        return {"passage": passage, "question": question.removesuffix("?"), "label": item["gold"]}
    if task == "winogrande":
        first, second = item["context_options"]
        shared = next(i for i, (a, b) in enumerate(zip(first, second, strict=False)) if a != b)
        shared = first.rfind(" ", 0, shared) + 1  # options are whole words
        sentence = first[:shared] + "_ " + item["continuation"]
        return {
            "sentence": sentence,
            "option1": first[shared:],
            "option2": second[shared:],
            "answer": str(item["gold"] + 1),
        }
    assert task == "lambada_openai"
    return {"text": item["context"] + " " + item["continuation"]}


def lm_eval_builtin(task: str, docs: list[dict], tmp_path):
    """lm-eval's own task `task` (its YAML, templates and metrics), reading `docs` from a local file."""
    from lm_eval.api.task import ConfigurableTask
    from lm_eval.tasks._yaml_loader import load_yaml

    include = (str(zeroshot_include_path(ZEROSHOT_DIR)),)  # the include paths the other tests' managers have
    config = load_yaml(manager_with_lm_evals_own_tasks(include).task_index[task].yaml_path)
    data = tmp_path / f"{task}.jsonl"
    data.write_text("".join(json.dumps(doc) + "\n" for doc in docs))
    config.update(
        dataset_path="json",
        dataset_name=None,
        dataset_kwargs={"data_files": {"test": str(data)}},
        test_split="test",
        validation_split=None,
        training_split=None,
        fewshot_split=None,
    )
    return ConfigurableTask(config=config)


def rendered(task, doc) -> tuple:
    """What lm-eval scores for one doc: prompt (or gold index), choices, target, and the delimiter."""
    choices = task.doc_to_choice(doc) if task.config.doc_to_choice is not None else None
    return task.doc_to_text(doc), choices, task.doc_to_target(doc), task.config.target_delimiter


@pytest.mark.parametrize("task", list(ZEROSHOT_TASKS))
def test_each_zeroshot_task_renders_two_items_exactly_as_lm_evals_own_task(task, tmp_path):
    manager = TaskEvaluator(None, [task], [zeroshot_include_path(ZEROSHOT_DIR)]).task_manager()
    ours = manager.load_task_or_group([f"zeroshot_{task}"])[f"zeroshot_{task}"]
    items = [ours.test_docs()[i] for i in (0, 1)]
    builtin = lm_eval_builtin(task, [as_lm_eval_doc(task, item) for item in items], tmp_path)
    for item, doc in zip(items, builtin.test_docs(), strict=True):
        assert rendered(ours, item) == rendered(builtin, doc)
    assert ours.OUTPUT_TYPE == builtin.OUTPUT_TYPE
    assert [m["metric"] for m in ours.config.metric_list] == [m["metric"] for m in builtin.config.metric_list]


def test_local_tasks_resolve_without_lm_evals_own_index_and_its_own_tasks_still_resolve():
    include = [zeroshot_include_path(ZEROSHOT_DIR)]
    local = TaskEvaluator(None, ["zeroshot", "boolq"], include).task_manager()
    assert "zeroshot_boolq" in local.all_tasks and "boolq" not in local.all_tasks  # lm-eval's boolq not indexed
    mixed = TaskEvaluator(None, ["boolq", "hellaswag"], include)
    assert {"zeroshot_boolq", "hellaswag"} <= set(mixed.task_manager().all_tasks)
    assert mixed.task_manager() is mixed.task_manager()  # the index is read once per evaluator
    again = TaskEvaluator(None, ["boolq", "hellaswag"], include).task_manager()
    assert again is mixed.task_manager()  # and once per process for the same include paths


def test_the_zeroshot_group_runs_every_task_with_stderr_counts_and_average():
    model, tokenizer = tiny_random("llama")
    evaluator = build_task_evaluator(tokenizer, ["zeroshot"], ZEROSHOT_DIR, limit=3, batch_size=8)
    result = evaluator(model)
    assert set(result["tasks"]) == set(ZEROSHOT_TASKS)
    for name, scores in result["tasks"].items():
        assert scores["items"] == 3 and 0 <= scores[HEADLINE[name]] <= 1 and f"{HEADLINE[name]}_stderr" in scores
    assert result["average"] == pytest.approx(sum(result["tasks"][n][HEADLINE[n]] for n in HEADLINE) / 7)
    assert "perplexity" in result["tasks"]["lambada_openai"]


@pytest.mark.parametrize(
    "tasks, zeroshot_dir, error, message",
    [
        (["zeroshot", "hellaswag_offline"], ZEROSHOT_DIR, ValueError, r"unknown task\(s\) \['hellaswag_offline'\]"),
        (["zeroshot"], "/nonexistent", FileNotFoundError, "the zero-shot suite needs .*arc_easy.jsonl"),
        (["arc_easy"], ZEROSHOT_DIR, ValueError, "eval.task_limit takes a whole number >= 1, got 0"),
    ],
)
def test_bad_task_settings_are_refused_before_any_model_is_used(tasks, zeroshot_dir, error, message):
    with pytest.raises(error, match=message):
        build_task_evaluator(tiny_random("llama")[1], tasks, zeroshot_dir, limit=0 if "limit" in message else None)


def test_local_tasks_are_well_formed_and_deterministic(wikitext_dir):
    folder = build_local_tasks(wikitext_dir / "wiki.test.raw", num_items=30, seed=1)
    again = build_local_tasks(wikitext_dir / "wiki.test.raw", num_items=30, seed=1)
    assert folder == again
    for task in LOCAL_TASKS:
        spec = yaml.safe_load((folder / f"{task}.yaml").read_text())
        assert spec["task"] == task and spec["output_type"] == "multiple_choice"
        items = [json.loads(line) for line in (folder / f"{task}.jsonl").read_text().splitlines()]
        assert len(items) == 30
        for item in items:
            assert len(item["choices"]) == 4 == len(set(item["choices"])) and 0 <= item["label"] < 4
    cloze = json.loads((folder / "wikitext2_cloze.jsonl").read_text().splitlines()[0])
    text = (wikitext_dir / "wiki.test.raw").read_text()
    assert (cloze["context"] + " " + cloze["choices"][cloze["label"]]) in text


def test_local_task_requests_join_context_and_answer_with_one_space(wikitext_dir):
    folder = build_local_tasks(wikitext_dir / "wiki.test.raw", num_items=5, seed=1)
    task = TaskEvaluator(None, ["wikitext2_cloze"], [folder]).task_manager().load_task_or_group(["wikitext2_cloze"])
    task = task["wikitext2_cloze"]
    task.build_all_requests(limit=5, rank=0, world_size=1)
    text = (wikitext_dir / "wiki.test.raw").read_text()
    gold = [i for i in task.instances if i.idx == i.doc["label"]]
    assert len(gold) == 5 and all("".join(i.arguments) in text for i in gold)  # lm-eval's own space, no second one
    assert all(not i.arguments[1].startswith("  ") for i in task.instances)


def test_a_changed_test_file_gets_tasks_of_its_own(tmp_path, wikitext_dir):
    copy = tmp_path / "wiki.test.raw"
    copy.write_text((wikitext_dir / "wiki.test.raw").read_text())
    first = build_local_tasks(copy, num_items=5)
    copy.write_text(copy.read_text().replace("the", "thy"))  # another text of the same size
    assert build_local_tasks(copy, num_items=5) != first
    assert build_local_tasks(wikitext_dir / "wiki.test.raw", num_items=5) != first  # same size, another file


def test_lm_eval_bridge_scores_the_in_memory_model_offline(wikitext_dir):
    model, tokenizer = tiny_random("llama")
    evaluator = build_task_evaluator(
        tokenizer, list(LOCAL_TASKS), wikitext_test=wikitext_dir / "wiki.test.raw", limit=12
    )
    scores = evaluator(model)["tasks"]
    assert set(scores) == set(LOCAL_TASKS)
    assert all(0 <= scores[t]["acc"] <= 1 and "acc_norm" in scores[t] and scores[t]["items"] == 12 for t in LOCAL_TASKS)
    assert not model.training


def test_tasks_run_in_the_evaluators_precision():
    model, tokenizer = tiny_random("llama")
    seen = []
    model.lm_head.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
    tasks = build_task_evaluator(tokenizer, ["arc_easy"], ZEROSHOT_DIR, limit=2)
    ids = torch.randint(3, 259, (300,), generator=torch.Generator().manual_seed(0))
    for precision, dtype in [("bfloat16", torch.bfloat16), ("float32", torch.float32)]:
        evaluator = Evaluator({"test": ids}, seq_lens=[128], max_windows=2, tasks=tasks, precision=precision)
        seen.clear()
        evaluator.summary(model)
        assert set(seen) == {dtype}  # the perplexity windows and every task forward (lm-eval's autocast had it off)


def test_a_group_of_tasks_reports_its_tasks_and_its_own_row_is_left_out(tmp_path):
    model, tokenizer = tiny_random("llama")
    (tmp_path / "pair.yaml").write_text(
        "group: pair\ntask: [zeroshot_arc_easy, zeroshot_piqa]\n"
        "aggregate_metric_list:\n  - metric: acc\n    aggregation: mean\n    weight_by_size: true\n"
    )
    evaluator = TaskEvaluator(tokenizer, ["pair"], [zeroshot_include_path(ZEROSHOT_DIR), tmp_path], limit=2)
    result = evaluator(model)
    assert set(result["tasks"]) == {"arc_easy", "piqa"} and result["tasks"]["piqa"]["items"] == 2


def test_tasks_refuse_a_bos_the_tokenizer_would_not_add_before_anything_loads():
    with pytest.raises(ValueError, match="data.bos=true, but lm-eval adds BOS only through the tokenizer"):
        build_task_evaluator(byte_tokenizer(), ["arc_easy"], ZEROSHOT_DIR, limit=2, add_bos=True)


def test_tasks_start_every_request_with_bos_as_the_perplexity_windows_do():
    model, _ = tiny_random("llama")
    tokenizer = byte_tokenizer(leading_bos=True)
    first_tokens = []

    def record_first_tokens(_module, args, kwargs):
        first_tokens.append((args[0] if args else kwargs["input_ids"])[:, 0])

    model.register_forward_pre_hook(record_first_tokens, with_kwargs=True)
    for add_bos, expected in [(True, True), (False, False)]:
        first_tokens.clear()
        build_task_evaluator(tokenizer, ["arc_easy"], ZEROSHOT_DIR, limit=2, add_bos=add_bos)(model)
        starts = torch.cat(first_tokens)
        assert bool((starts == tokenizer.bos_token_id).all()) is expected, starts


def test_metrics_under_several_filters_keep_their_filter():
    assert metric_name("acc,none") == "acc" and metric_name("acc_stderr,none") == "acc_stderr"
    assert metric_name("exact_match,strict-match") == "exact_match/strict-match"
    assert metric_name("exact_match_stderr,flexible-extract") == "exact_match/flexible-extract_stderr"
