"""The study runner: arms run as train.py jobs, their reports collected into a table and plots."""

import json
import shutil

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM

from prune_recover.jobs.configs import compose_train_config
from prune_recover.jobs.study import REPO, collect, resume_or_restart, run_study, write_report
from prune_recover.jobs.study_table import markdown_table, rows
from tests.test_train_cli import tiny_overrides


def test_study_runs_its_arms_and_writes_the_report(wikitext_dir, tmp_path):
    study = tmp_path / "study.yaml"
    common = [o for o in tiny_overrides(wikitext_dir, "x") if not o.startswith("output_dir=")]
    common += ["logger=csv", "eval.seq_lens=[64,128]", "trainer.max_steps=4"]
    study.write_text(
        yaml.safe_dump(
            {
                "common": common,
                "arms": {
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
    assert "width (activation) + full" in text and "depth (ppl) + cpt_then_lora" in text
    for image in ("ppl_vs_params.png", "ppl_over_steps.png"):
        assert (out / image).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = json.loads((out / "report.json").read_text())["rows"]
    assert {r["run"] for r in rows} == {"width_full", "depth_cpt_lora"}
    assert all(r["ppl@128"] and r["recovery_tokens"] == 4 * 4 * 64 for r in rows)
    shallow = AutoModelForCausalLM.from_pretrained(out / "depth_cpt_lora" / "final")
    prompt = torch.tensor([[5, 6, 7, 8]])
    cached = shallow.generate(prompt, max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert torch.equal(
        cached, shallow.generate(prompt, max_new_tokens=6, do_sample=False, use_cache=False, pad_token_id=0)
    )
    assert len(collect([out])) == 2

    # an arm cut off after its last checkpoint (no report yet) resumes on the next run of the study
    (out / "width_full" / "pruning_report.json").unlink()
    shutil.rmtree(out / "width_full" / "final")
    run_study(study, out, [])
    resumed = json.loads((out / "width_full" / "pruning_report.json").read_text())
    assert "ckpt_path=last" in resumed["command"] and resumed["recovery"]["steps"] == 4


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
    media = next((tmp_path / "report" / "wandb").glob("offline-run-*")) / "files" / "media"
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


def test_an_arm_that_cannot_run_is_refused_before_any_arm_runs(wikitext_dir, tmp_path):
    common = [o for o in tiny_overrides(wikitext_dir, "x") if not o.startswith("output_dir=")] + ["logger=csv"]
    arms = {"good": ["recovery=lora"], "typo": ["pruning.importance=activaton"], "late": ["recovery=distill"]}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump({"common": common, "arms": arms}))
    with pytest.raises(ValueError, match="study arm 'typo' cannot run, so no arm was started: .*activaton"):
        run_study(tmp_path / "s.yaml", tmp_path / "out", [])
    assert not (tmp_path / "out").exists()  # 'good' used to train and export first


def test_the_report_leaves_out_runs_moved_aside_by_overwrite(tmp_path):
    for folder in ["arm", "arm/replaced-2026-12-01_10-00-00"]:
        (tmp_path / folder).mkdir(parents=True)
        (tmp_path / folder / "pruning_report.json").write_text(json.dumps({"config": {"study_arm": "arm"}}))
    assert [report["name"] for report in collect([tmp_path])] == ["arm"]


def test_study_table_has_a_column_for_each_held_out_domain_and_the_zeroshot_average():
    def report(name, params, code=None, zeroshot=None):
        by_domain = {"wikitext2": {"128": 40.0, "1024": 20.0}} | ({"code": {"128": 9.0, "1024": code}} if code else {})
        return {
            "name": name,
            "config": {"eval": {"test_name": "wikitext2"}},
            "base": {"params": 100},
            "final": {
                "params": params,
                "ppl_by_seq_len": {"128": 40.0, "1024": 20.0},
                "ppl_by_domain": by_domain,
                "task_average": zeroshot,
            },
            "events": [{"importance": "activation", "ppl_after_by_seq_len": {"128": 50.0}}],
            "recovery": {"method": "full", "tokens_seen": 10},
        }

    table = rows([report("a", 80, code=12.5, zeroshot=0.4123), report("b", 90)])
    assert [r["run"] for r in table] == ["b", "a"]
    assert table[1]["code@1024"] == 12.5 and table[1]["zeroshot_average"] == 0.4123
    assert table[0]["code@1024"] is None and list(table[0]) == list(table[1])
    lines = markdown_table(table).splitlines()
    assert "| code ppl@1024 | zero-shot average |" in lines[0]
    assert "| 20.00 | 12.50 | 0.412 |" in lines[3] and "| 20.00 | n/a | n/a |" in lines[2]


def test_shortened_llama_study_trains_on_wikitext_and_scores_held_out_code_and_the_zeroshot_suite():
    # the demo recipe it builds on moved to a prose/code mixture; the study's arms must stay on WikiText-2 so that
    # code is a domain none of them trained or calibrated on
    study = yaml.safe_load((REPO / "configs" / "study" / "shortened_llama_small.yaml").read_text())
    for name, arm in study["arms"].items():
        cfg = compose_train_config([*study["common"], *arm])
        assert "mixture" not in cfg.data and cfg.data.files is None, name
        assert cfg.data.train_split == "valid" and cfg.data.calibration.split is None, name
        assert list(cfg.eval.texts) == ["code"] and list(cfg.eval.tasks) == ["zeroshot"], name
        assert cfg.eval.task_limit == 100 and list(cfg.eval.seq_lens) == [128, 1024], name


@pytest.mark.parametrize("sharded", [False, True])
def test_an_unfinished_arm_resumes_from_its_last_checkpoint_file_or_sharded_folder(tmp_path, sharded):
    assert resume_or_restart(tmp_path) == "overwrite=true"  # nothing saved yet
    last = tmp_path / "checkpoints" / "last.ckpt"
    last.parent.mkdir()
    if sharded:  # FSDP's sharded state dict: a folder of shards
        last.mkdir()
        (last / "meta.pt").write_text("")
    else:
        last.write_text("")
    assert resume_or_restart(tmp_path) == "ckpt_path=last"
