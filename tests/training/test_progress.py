"""What a SLURM log shows while training: a line every N steps, tokens/s from Lightning's ThroughputMonitor."""

import logging

from lightning.pytorch.loggers import CSVLogger

from prune_recover.tiny_models import tiny_random
from prune_recover.training.progress import TOKENS_PER_S, ProgressLog, TokenThroughputMonitor
from prune_recover.training.recovery_module import RecoveryModule
from tests.conftest import tiny_data, tiny_trainer


def test_a_line_every_n_steps_with_loss_speed_lr_size_and_eta(wikitext_dir, tmp_path, caplog):
    monitor = TokenThroughputMonitor(window_size=2)
    trainer = tiny_trainer(
        tmp_path,
        callbacks=[monitor, ProgressLog(every_n_steps=3)],
        max_steps=7,
        logger=CSVLogger(tmp_path),
        log_every_n_steps=1,
    )
    with caplog.at_level(logging.INFO, logger="prune_recover.training.progress"):
        trainer.fit(RecoveryModule(tiny_random("llama")[0]), datamodule=tiny_data(wikitext_dir))
    lines = [r.getMessage() for r in caplog.records if r.name == "prune_recover.training.progress"]
    assert [line.split(" | ")[0] for line in lines] == ["step 3/7", "step 6/7", "step 7/7"]
    for line in lines:
        fields = line.split(" | ")
        assert fields[1].startswith("loss ") and fields[2].endswith(" tok/s") and fields[3].startswith("lr ")
        assert fields[4] == "0.18M params" and fields[5].startswith("ETA ")
    assert lines[-1].endswith("ETA 0m00s")
    assert trainer.logged_metrics[TOKENS_PER_S] > 0  # 4 x 64 tokens per batch, measured by the library
