"""Quality beyond WikiText: a mixture of domains, perplexity per domain, zero-shot tasks, distillation, the model card
and the stand-alone evaluation command, on the tiny model."""

import json
import subprocess
import sys

import pytest
import torch
from huggingface_hub import ModelCard

from prune_recover.jobs.evaluate_model import evaluate_model
from prune_recover.jobs.evaluate_model import main as evaluate_main
from prune_recover.jobs.export import HubPushError
from prune_recover.models import model_origin
from prune_recover.tiny_models import tiny_random
from prune_recover.training.recovery_module import RecoveryModule
from tests.conftest import tiny_data, tiny_trainer
from tests.test_train_cli import REPO, compose_config, tiny_overrides
from train import run

pytest.importorskip("lm_eval", reason='zero-shot tasks need pip install -e ".[eval]"')
TWO_DOMAINS = ["data=wikitext2_code", "eval=wikitext2_code", "eval.seq_lens=[64]", "eval.max_windows=2"]


def two_domain_overrides(wikitext_dir, out) -> list[str]:
    return tiny_overrides(wikitext_dir, out) + TWO_DOMAINS + [f"data.wikitext_dir={wikitext_dir}", "logger=wandb"]


def test_a_distilled_two_domain_run_reports_every_domain_and_the_zero_shot_suite(wikitext_dir, tmp_path):
    out = tmp_path / "run"
    overrides = ["recovery=distill", "eval.tasks=[zeroshot]", "eval.task_limit=2"]
    report = run(compose_config(two_domain_overrides(wikitext_dir, out) + overrides))

    assert set(report["data"]["train"]) == {"wikitext", "code"}
    for stage in (report["base"], report["final"]):
        assert (
            set(stage["ppl_by_domain"]) == {"wikitext2", "code"}
            and stage["ppl"] == stage["ppl_by_domain"]["wikitext2"]["64"]
        )
        assert len(stage["tasks"]) == 7 and all(scores["items"] == 2 for scores in stage["tasks"].values())
        assert 0 <= stage["task_average"] <= 1
    assert set(report["events"][0]["ppl_after_by_domain"]) == {"wikitext2", "code"}
    assert "tasks" not in report["events"][0]  # tasks run before pruning and at the end only
    assert report["protocol"]["task_limit"] == 2 and report["recovery"]["method"] == "distill"
    assert json.loads((out / "pruning_report.json").read_text())["final"] == report["final"]

    card = ModelCard.load(out / "final" / "README.md")
    assert card.data.library_name == "transformers" and card.data.pipeline_tag == "text-generation"
    assert "recovery-distill" in card.data.tags and "| arc_easy | acc |" in card.text and "| code | 64 |" in card.text
    assert "first 2 items" in card.text and f"forward passes in {report['protocol']['precision']}" in card.text
    tables = list((out / "wandb").glob("offline-run-*/files/media/table/test/tasks*.table.json"))
    assert tables and json.loads(tables[0].read_text())["columns"][:4] == ["task", "metric", "base", "final"]


def test_the_bundled_model_card_names_its_base_model_and_licence():
    assert model_origin("smollm2-135m") == ("HuggingFaceTB/SmolLM2-135M-Instruct", "apache-2.0")
    assert model_origin("tiny-random") == (None, None)


@pytest.mark.parametrize(
    "overrides, error, message",
    [
        (["eval.tasks=[zeroshot,hellaswag_local]"], ValueError, r"unknown task\(s\) \['hellaswag_local'\]"),
        (["+eval.texts.novel=/nonexistent/book.txt"], FileNotFoundError, "book.txt"),
        (["eval.tasks=[zeroshot]", "eval.zeroshot_dir=/nonexistent"], FileNotFoundError, "zero-shot suite needs"),
        (["export.push_to_hub=not a repo"], ValueError, "push_to_hub must be a Hub repository id ORG/NAME"),
        # the tests run with HF_HUB_OFFLINE=1 (conftest); this was found only after training, at the upload
        (["export.push_to_hub=my-org/pruned"], ValueError, r"the Hub is switched off \(HF_HUB_OFFLINE=1\)"),
    ],
)
def test_bad_evaluation_settings_are_refused_before_any_weights_load(
    wikitext_dir, tmp_path, monkeypatch, overrides, error, message
):
    monkeypatch.setattr(
        "train.load_model", lambda **_: pytest.fail("weights loaded before the bad setting was refused")
    )
    with pytest.raises(error, match=message):
        run(compose_config(two_domain_overrides(wikitext_dir, tmp_path / "run") + overrides))


@pytest.mark.parametrize(
    "text, message",
    [
        ("", r"eval.texts.short \(.*short.txt\): the data files \[.*short.txt.\] are empty"),
        ("short text", "'short' has 10 tokens, fewer than one"),
    ],
)
def test_an_empty_or_too_short_text_domain_is_refused_before_any_weights_load(
    wikitext_dir, tmp_path, monkeypatch, text, message
):
    short = tmp_path / "short.txt"
    short.write_text(text)
    monkeypatch.setattr("train.load_model", lambda **_: pytest.fail("weights loaded before the bad text was refused"))
    with pytest.raises(ValueError, match=message):
        run(compose_config(two_domain_overrides(wikitext_dir, tmp_path / "run") + [f"+eval.texts.short={short}"]))


def hub_online(monkeypatch, tmp_path, token: str | None) -> None:
    """The Hub switched on with `token` (None: none at all), at an endpoint that refuses every connection."""
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    monkeypatch.setattr("huggingface_hub.constants.ENDPOINT", "http://127.0.0.1:9")  # the discard port: refused
    monkeypatch.setattr("huggingface_hub.constants.HF_TOKEN_PATH", str(tmp_path / "no-token-file"))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    if token is not None:
        monkeypatch.setenv("HF_TOKEN", token)


def test_push_to_hub_without_a_token_is_refused_before_any_weights_load(wikitext_dir, tmp_path, monkeypatch):
    hub_online(monkeypatch, tmp_path, token=None)
    monkeypatch.setattr("train.load_model", lambda **_: pytest.fail("weights loaded before the push was refused"))
    with pytest.raises(ValueError, match="push_to_hub=my-org/pruned but there is no Hugging Face token: set HF_TOKEN"):
        run(compose_config(tiny_overrides(wikitext_dir, tmp_path / "run") + ["export.push_to_hub=my-org/pruned"]))


def test_a_failed_upload_fails_clearly_after_a_complete_local_export(wikitext_dir, tmp_path, monkeypatch):
    hub_online(monkeypatch, tmp_path, token="hf_not_a_real_token")
    out = tmp_path / "run"
    with pytest.raises(HubPushError, match=r"push_to_hub=my-org/pruned.*local export .*final is complete"):
        run(compose_config(tiny_overrides(wikitext_dir, out) + ["logger=csv", "export.push_to_hub=my-org/pruned"]))
    assert (out / "final" / "model.safetensors").is_file() and (out / "final" / "README.md").is_file()
    assert json.loads((out / "pruning_report.json").read_text())["final"]["params"] > 0


def test_distill_trains_on_the_teacher_kl_alone_and_keeps_a_bf16_teacher_under_bf16_autocast(wikitext_dir, tmp_path):
    with pytest.raises(ValueError, match="'distill' needs recovery.module.distill.alpha > 0"):
        RecoveryModule(tiny_random("llama")[0], method="distill")
    module = RecoveryModule(tiny_random("llama")[0], method="distill", distill={"alpha": 1.0})
    tokens = torch.randint(3, 259, (2, 16))
    with torch.no_grad():
        module.model.lm_head.weight.mul_(1.5)  # student != teacher
        output = module(tokens, labels=tokens)
    kd = module._distillation_loss(output.logits, tokens)
    assert kd > 0 and not torch.isclose(kd, output.loss)  # the CE term has weight 1 - alpha = 0
    assert all(p.requires_grad for p in module.model.parameters())
    tiny_trainer(tmp_path, max_steps=1, precision="bf16-mixed").fit(module, datamodule=tiny_data(wikitext_dir))
    assert next(module.teacher.parameters()).dtype == torch.bfloat16
    assert next(module.model.parameters()).dtype == torch.float32  # float32 masters, bf16 compute


def test_the_evaluation_command_scores_any_model_without_training(wikitext_dir, tmp_path):
    out = tmp_path / "eval"
    command = [sys.executable, "-m", "prune_recover.eval", "tiny-random", *TWO_DOMAINS[1:], "eval.tasks=[piqa]"]
    command += ["eval.task_limit=3", f"data.wikitext_dir={wikitext_dir}", f"output_dir={out}"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "wikitext2    @64" in result.stdout and "code" in result.stdout and "piqa" in result.stdout
    report = json.loads((out / "eval_report.json").read_text())
    assert report["result"]["tasks"]["piqa"]["items"] == 3 and report["protocol"]["task_limit"] == 3
    assert set(report["result"]["ppl_by_domain"]) == {"wikitext2", "code"}
    with pytest.raises(FileExistsError, match="holds an earlier evaluation"):  # was silently replaced
        evaluate_model("tiny-random", command[4:])  # the same overrides, in this process (no start-up)
    assert json.loads((out / "eval_report.json").read_text()) == report
    with pytest.raises(SystemExit, match="usage: python -m prune_recover.eval MODEL"):
        evaluate_main([])
