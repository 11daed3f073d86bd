"""Deployment metrics, the lm-eval bridge with local tasks, and the study runner/report."""

import json

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM

from prune_recover import deploy
from prune_recover.lm_eval_bridge import LOCAL_TASKS, TaskEvaluator, build_local_tasks
from prune_recover.models import save_pretrained_atomic, tiny_random
from prune_recover.pruning.pruner import Pruner
from prune_recover.study import collect, run_study, write_report
from tests.test_train_cli import tiny_overrides


def test_flops_per_token_counts_matmul_weights_and_attention():
    model, _ = tiny_random("llama")  # untied: 181,184 params, embedding 259 x 64
    expected = 2 * (181184 - 259 * 64) + 4 * 4 * 100 * 4 * 16
    assert deploy.flops_per_token(model.config, 181184, context=100) == expected
    tied, _ = tiny_random("llama", tie_word_embeddings=True)
    params = sum(p.numel() for p in tied.parameters())
    assert deploy.flops_per_token(tied.config, params, context=0) == 2 * params


def test_measure_and_compare_base_with_pruned(tmp_path):
    model, tokenizer = tiny_random("llama")
    result = deploy.measure(model, prompt_lengths=(16, 32), new_tokens=4, batch_size=2, repeats=1)
    assert set(result["prompts"]) == {"16", "32"} and result["batch"]["tokens_per_s"] > 0
    assert all(p["ttft_ms"] > 0 and p["decode_tokens_per_s"] > 0 for p in result["prompts"].values())
    tensors = [*model.parameters(), *model.buffers()]  # parameters() yields a tied matrix once
    assert result["weights_mb"] == pytest.approx(sum(t.numel() * t.element_size() for t in tensors) / 2**20)
    save_pretrained_atomic(model, tokenizer, tmp_path / "base")
    Pruner(importance="maw", ratio=0.5, refit=False, depth={"num_blocks": 1}).prune(
        model, [torch.randint(3, 259, (2, 16))]
    )
    save_pretrained_atomic(model, tokenizer, tmp_path / "pruned")
    flags = ["--prompt-lengths", "16", "--new-tokens", "4", "--batch-size", "2", "--repeats", "1", "--device", "cpu"]
    compared = deploy.compare(str(tmp_path / "base"), str(tmp_path / "pruned"), flags)
    assert compared["ratios"]["16"]["flop_reduction"] > 1.3
    assert compared["pruned"]["params"] < compared["base"]["params"]
    assert compared["pruned"]["weights_mb"] < compared["base"]["weights_mb"]
    assert "| 16 |" in deploy.markdown(compared) and compared["base"]["peak_memory_mb"] > 0


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
    assert (cloze["context"] + cloze["choices"][cloze["label"]]) in text


def test_lm_eval_bridge_scores_the_in_memory_model_offline(wikitext_dir, monkeypatch):
    pytest.importorskip("lm_eval", reason='the lm-eval bridge needs pip install -e ".[eval]"')
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    model, tokenizer = tiny_random("llama")
    folder = build_local_tasks(wikitext_dir / "wiki.test.raw", num_items=12)
    scores = TaskEvaluator(tokenizer, list(LOCAL_TASKS), folder, limit=12, batch_size=4)(model)
    assert set(scores) == set(LOCAL_TASKS)
    assert all(0 <= scores[t]["acc"] <= 1 and "acc_norm" in scores[t] for t in LOCAL_TASKS)
    assert not model.training


def test_study_runs_its_arms_and_writes_the_report(wikitext_dir, tmp_path):
    study = tmp_path / "study.yaml"
    common = [o for o in tiny_overrides(wikitext_dir, "x") if not o.startswith("output_dir=")]
    common += ["logger=csv", "eval.seq_lens=[64,128]", "trainer.max_steps=4"]
    study.write_text(
        yaml.safe_dump(
            {
                "common": common,
                "arms": {
                    "depth_lora": ["pruning.ratio=null", "pruning.depth.num_blocks=1", "recovery=lora"],
                    "width_full": ["pruning.ratio=null", "pruning.target_params=140000", "recovery=full"],
                    "depth_cpt_lora": [
                        "pruning.ratio=null",
                        "pruning.depth.num_blocks=2",
                        "recovery=cpt_then_lora",
                        "recovery.module.lora_from_step=2",
                    ],
                },
            }
        )
    )
    out = tmp_path / "out"
    reports = run_study(study, out, [])
    assert all(path.is_file() for path in reports)
    written = write_report([out], out)
    text = written.read_text()
    assert "depth (ppl) + lora" in text and "width (activation) + full" in text and "cpt_then_lora" in text
    for image in ("ppl_vs_params.png", "ppl_over_steps.png"):
        assert (out / image).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = json.loads((out / "report.json").read_text())["rows"]
    assert {r["run"] for r in rows} == {"depth_lora", "width_full", "depth_cpt_lora"}
    assert all(r["ppl@128"] and r["recovery_tokens"] == 4 * 4 * 64 for r in rows)
    shallow = AutoModelForCausalLM.from_pretrained(out / "depth_cpt_lora" / "final")
    prompt = torch.tensor([[5, 6, 7, 8]])
    cached = shallow.generate(prompt, max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert torch.equal(
        cached, shallow.generate(prompt, max_new_tokens=6, do_sample=False, use_cache=False, pad_token_id=0)
    )
    assert len(collect([out])) == 3


def test_study_report_logs_to_wandb_offline(wikitext_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    report = {
        "base": {"params": 100},
        "final": {"params": 80, "ppl_by_seq_len": {"128": 20.0, "1024": 15.0}},
        "events": [{"importance": "activation", "ppl_after_by_seq_len": {"128": 30.0}}],
        "recovery": {"method": "full", "tokens_seen": 10},
        "history": [{"step": 1, "val_ppl": 25.0}],
    }
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "pruning_report.json").write_text(json.dumps(report))
    write_report([tmp_path / "a"], tmp_path / "report", wandb_project="prune_recover_tests")
    media = next((tmp_path / "wandb").glob("offline-run-*")) / "files" / "media"
    assert sorted(p.name.split("_0_")[0] for p in (media / "images" / "study").glob("*.png")) == [
        "ppl_over_steps",
        "ppl_vs_params",
    ]
    table = json.loads(next((media / "table" / "study").glob("*.table.json")).read_text())
    assert table["data"][0][:2] == ["a", "width (activation) + full"]


def test_a_study_file_without_arms_is_rejected(tmp_path):
    (tmp_path / "s.yaml").write_text("common: []\n")
    with pytest.raises(ValueError, match="needs a non-empty mapping 'arms"):
        run_study(tmp_path / "s.yaml", tmp_path / "out", [])
