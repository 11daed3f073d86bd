"""The suite runs offline and writes nothing into the user's caches, in process as in its subprocesses."""

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import datasets.config
import huggingface_hub.constants

from tests.conftest import DATASETS_CACHE, REPO


def test_the_hub_and_datasets_are_offline_inside_the_test_process():
    assert huggingface_hub.constants.HF_HUB_OFFLINE
    assert datasets.config.HF_DATASETS_OFFLINE


def test_datasets_cache_into_the_sessions_own_folder():
    assert Path(datasets.config.HF_DATASETS_CACHE) == DATASETS_CACHE


def test_a_worker_that_imports_the_conftest_uses_the_same_folder_and_leaves_none_behind():
    def folders() -> set[Path]:
        return set(Path(tempfile.gettempdir()).glob("prune-recover-tests-datasets-*"))

    before = folders()
    shown = "from tests.conftest import DATASETS_CACHE; print(DATASETS_CACHE)"
    out = subprocess.run([sys.executable, "-c", shown], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str(DATASETS_CACHE)
    assert folders() == before


def test_a_script_that_imports_the_conftest_outside_pytest_removes_its_folder_at_exit():
    environment = {k: v for k, v in os.environ.items() if k != "PRUNE_RECOVER_TESTS_DATASETS_CACHE"}
    shown = "from tests.conftest import DATASETS_CACHE; print(DATASETS_CACHE, DATASETS_CACHE.is_dir())"
    out = subprocess.run(
        [sys.executable, "-c", shown], cwd=REPO, env=environment, capture_output=True, text=True, check=True
    )
    folder, existed = out.stdout.split()
    assert folder != str(DATASETS_CACHE) and existed == "True"
    assert not Path(folder).exists()
    assert DATASETS_CACHE.is_dir()  # this session's folder stays until the session ends
