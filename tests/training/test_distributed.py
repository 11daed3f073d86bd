"""Multi-process runs on CPU: real DDP with gloo, SLURM launch with a local stand-in for srun, sweeps."""

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir

from prune_recover.jobs.configs import register_resolvers
from tests.training.ddp_validation_worker import main as validate_in_this_process

REPO = Path(__file__).resolve().parents[2]


def test_two_rank_ddp_prunes_identically_mid_training_and_keeps_learning(wikitext_dir, tmp_path):
    result = subprocess.run(
        [sys.executable, "tests/training/ddp_worker.py", str(tmp_path), str(wikitext_dir)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert ranks[0]["shape"] == ranks[1]["shape"] == [64, 3, 3]
    assert ranks[0]["digest"] == ranks[1]["digest"], "ranks ended with different weights"
    assert [e["step"] for e in ranks[0]["events"]] == [4, 8]
    # each rank chose the same neurons from its own training batches' statistics, before any broadcast
    assert len(ranks[0]["kept"]) == 2 and ranks[0]["kept"] == ranks[1]["kept"]
    assert ranks[0]["kept"][0]["0"] != list(range(64)), "a real choice, not the first neurons by index"
    rank_local = {"seconds", "train_loss"}  # wall time and the rank's own batch loss
    decisions = [[{k: v for k, v in e.items() if k not in rank_local} for e in r["events"]] for r in ranks]
    assert decisions[0] == decisions[1]
    for rank in ranks:
        after_event = rank["losses"][8:]
        assert sum(after_event[-5:]) / 5 < sum(after_event[:5]) / 5, "loss stopped decreasing after pruning"


FAKE_SRUN = """#!/bin/bash
# Stand-in for srun on one node: start SLURM_NTASKS local copies of the command, each with its task ids.
pids=()
for ((i = 0; i < SLURM_NTASKS; i++)); do
  SLURM_PROCID=$i SLURM_LOCALID=$i SLURM_NODEID=0 "$@" &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
exit $status
"""


def fake_slurm_env(tmp_path, job_id: str, tasks: int) -> dict:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "srun").write_text(FAKE_SRUN)
    (bin_dir / "scontrol").write_text(f'#!/bin/bash\necho "$@" >> {tmp_path}/scontrol.log\n')
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    env = {key: value for key, value in os.environ.items() if not key.startswith(("SLURM_", "MASTER_", "WANDB_RUN"))}
    env.update(
        PATH=f"{bin_dir}:{env['PATH']}",
        SLURM_JOB_ID=job_id,
        SLURM_JOB_NAME="prune_recover",
        SLURM_NTASKS=str(tasks),
        SLURM_NTASKS_PER_NODE=str(tasks),
        SLURM_NNODES="1",
        SLURM_NODELIST="localhost",
        SLURM_PROCID="0",
        SLURM_LOCALID="0",
        SLURM_NODEID="0",
        PRUNE_RECOVER_OUTPUT_ROOT=str(tmp_path / "outputs"),
        WANDB_MODE="offline",
    )
    return env


def cpu_overrides(wikitext_dir) -> list[str]:
    from tests.test_train_cli import tiny_overrides

    dropped = ("output_dir=", "trainer=")
    return [o for o in tiny_overrides(wikitext_dir, "unused") if not o.startswith(dropped)] + [
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.precision=32-true",
        "logger=csv",
    ]


def test_train_sbatch_runs_under_a_slurm_environment_with_two_tasks(wikitext_dir, tmp_path):
    env = fake_slurm_env(tmp_path, "4242", tasks=2)
    result = subprocess.run(
        ["bash", "slurm/train.sbatch", "recipe=smollm2_demo", *cpu_overrides(wikitext_dir)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads((tmp_path / "outputs" / "slurm-4242" / "pruning_report.json").read_text())
    assert report["recovery"]["cluster_environment"] == "SLURMEnvironment"
    assert report["recovery"]["world_size"] == 2
    assert report["config"]["run_id"] == "slurm-4242"
    assert report["final"]["intermediate_size"] == 77


@pytest.mark.parametrize(
    "checkpoints, resumed",
    [
        ([], "null"),
        (["hpc_ckpt_1.ckpt", "checkpoints/last.ckpt"], "checkpoints/last.ckpt"),  # preempted after the requeue
        (["checkpoints/last.ckpt", "hpc_ckpt_1.ckpt", "hpc_ckpt_2.ckpt"], "hpc_ckpt_2.ckpt"),
    ],
)
def test_a_restarted_sbatch_job_resumes_from_its_newest_checkpoint(tmp_path, checkpoints, resumed):
    env = fake_slurm_env(tmp_path, "4343", tasks=1)
    (tmp_path / "bin" / "srun").write_text(f'#!/bin/bash\necho "$@" > {tmp_path}/srun.log\n')  # the command only
    out = tmp_path / "outputs" / "slurm-4343"
    for age, name in enumerate(checkpoints):  # oldest first
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text("")
        os.utime(out / name, (1_000_000 + age, 1_000_000 + age))
    subprocess.run(["bash", "slurm/train.sbatch", "recipe=smollm2_demo"], cwd=REPO, env=env, check=True, timeout=60)
    command = (tmp_path / "srun.log").read_text().split()
    assert command[-1] == "ckpt_path=" + (resumed if resumed == "null" else str(out / resumed))


def test_a_job_resubmitted_after_a_crash_continues_the_folder_it_is_given(tmp_path):
    env = fake_slurm_env(tmp_path, "4444", tasks=1)  # a new job id
    (tmp_path / "bin" / "srun").write_text(f'#!/bin/bash\necho "$@" > {tmp_path}/srun.log\n')
    old = tmp_path / "outputs" / "slurm-4343"
    (old / "checkpoints").mkdir(parents=True)
    (old / "checkpoints" / "last.ckpt").write_text("")
    env = {**env, "PRUNE_RECOVER_OUTPUT_DIR": str(old)}
    subprocess.run(["bash", "slurm/train.sbatch", "recipe=smollm2_demo"], cwd=REPO, env=env, check=True, timeout=60)
    command = (tmp_path / "srun.log").read_text().split()
    assert command[-2:] == [f"output_dir={old}", f"ckpt_path={old / 'checkpoints' / 'last.ckpt'}"]  # was slurm-4444


@pytest.mark.parametrize("exported", [True, False])
def test_a_sweep_task_fails_when_its_run_exported_nothing_though_wandb_agent_exits_0(tmp_path, exported):
    env = fake_slurm_env(tmp_path, "4545", tasks=1)
    env.update(SLURM_ARRAY_JOB_ID="4545", SLURM_ARRAY_TASK_ID="3")
    run = 'mkdir -p "$PRUNE_RECOVER_OUTPUT_ROOT/run/final" && touch "$PRUNE_RECOVER_OUTPUT_ROOT/run/final/config.json"'
    agent = tmp_path / "bin" / "wandb"  # a stand-in for the agent: runs the sweep's command, exits 0 whatever it did
    agent.write_text(f"#!/bin/bash\n{run if exported else 'false'}\nexit 0\n")
    agent.chmod(0o755)
    result = subprocess.run(["bash", "slurm/sweep.sbatch", "me/proj/sweep1"], cwd=REPO, env=env, capture_output=True)
    assert result.returncode == (0 if exported else 1)
    assert (tmp_path / "outputs" / "sweep-4545_3").is_dir() == exported


def test_every_sbatch_file_parses():
    for script in sorted((REPO / "slurm").glob("*.sbatch")):
        subprocess.run(["bash", "-n", str(script)], check=True)
        text = script.read_text()
        assert "srun" in text and "lr=" not in text and "max_steps" not in text  # no hyperparameters here


def sweep_commands(path: Path) -> list[list[str]]:
    """The argument lists a W&B agent would run for a grid sweep (`${args_no_hyphens}` expanded)."""
    sweep = yaml.safe_load(path.read_text())
    names = list(sweep["parameters"])
    grid = itertools.product(*(sweep["parameters"][name]["values"] for name in names))
    commands = []
    for values in grid:
        args = [f"{name}={value}" for name, value in zip(names, values, strict=True)]
        command = []
        for part in sweep["command"]:
            command += args if part == "${args_no_hyphens}" else [part]
        commands.append(command)
    return commands


@pytest.mark.parametrize("sweep", sorted(p.name for p in (REPO / "configs" / "sweep").glob("*.yaml")))
def test_every_sweep_command_composes(sweep):
    path = REPO / "configs" / "sweep" / sweep
    spec = yaml.safe_load(path.read_text())
    assert spec["program"] == "train.py" and spec["metric"]["name"]
    register_resolvers()
    commands = sweep_commands(path)
    assert len(commands) == len(list(itertools.product(*(p["values"] for p in spec["parameters"].values()))))
    groups = set()
    for command in commands:
        assert command[:3] == ["${env}", "python", "${program}"]
        with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
            cfg = compose(config_name="train", overrides=command[3:])
        for override in command[3:]:
            key, value = override.split("=", 1)
            if key == "recovery":
                assert cfg.recovery.method == value
            elif key not in ("recipe",):
                assert str(OmegaConf_select(cfg, key)).lower() == value.lower()
        groups.add(cfg.recipe_name)
        assert cfg.logger.wandb.offline is False
    assert len(groups) == 1, "runs of one sweep must share a W&B group"


def OmegaConf_select(cfg, key):
    from omegaconf import OmegaConf

    return OmegaConf.select(cfg, key)


def test_validation_perplexity_under_two_process_ddp_equals_one_process(wikitext_dir, tmp_path):
    validate_in_this_process(tmp_path / "devices1.json", str(wikitext_dir), 1)  # no process start-up for 1 device
    out = tmp_path / "devices2.json"
    result = subprocess.run(
        [sys.executable, "tests/training/ddp_validation_worker.py", str(out), str(wikitext_dir), "2"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    results = {devices: json.loads((tmp_path / f"devices{devices}.json").read_text()) for devices in (1, 2)}
    # each rank sees 4 of the 8 blocks; torchmetrics sums NLL and tokens over both before the ratio
    assert results[2]["val/ppl"] == pytest.approx(results[1]["val/ppl"], rel=1e-6)
    assert results[2]["val/loss"] == pytest.approx(results[1]["val/loss"], rel=1e-6)
