"""Pruning state on the model's device: training statistics restored from a checkpoint (loaded onto the CPU) and
depth scores reduced across ranks (NCCL takes no CPU tensor)."""

import pytest
import torch

from prune_recover.pruning.calibration import ActivationRecorder
from prune_recover.pruning.pruner import Pruner
from prune_recover.tiny_models import tiny_random
from tests.conftest import token_batches


def recorded_state(gram: bool) -> dict:
    model, _ = tiny_random("llama")
    with ActivationRecorder(model, gram=gram) as recorder, torch.no_grad():
        model(token_batches(count=1)[0])
    return recorder.state_dict()


def test_restored_statistics_follow_the_models_device():
    state = recorded_state(gram=True)  # CPU tensors, as a checkpoint loads them
    model, _ = tiny_random("llama")
    recorder = ActivationRecorder(model.to("meta"), gram=True)  # a device other than the checkpoint's
    recorder.load_state_dict(state)
    assert {t.device.type for s in recorder.stats.values() for t in (s.sum_sq, s.gram)} == {"meta"}


def test_restored_statistics_without_the_gram_the_refit_needs_are_refused():
    model, _ = tiny_random("llama")
    with pytest.raises(ValueError, match="saved statistics of layer 0 have no Gram matrix"):
        ActivationRecorder(model, gram=True).load_state_dict(recorded_state(gram=False))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_depth_scores_are_reduced_on_the_models_device():
    model, _ = tiny_random("llama")
    model.cuda()
    devices = []

    def reduce(tensor):
        devices.append(tensor.device.type)
        return tensor

    Pruner(ratio=None, depth={"num_blocks": 1}).prune(model, [b.cuda() for b in token_batches()], reduce=reduce)
    assert devices == ["cuda"]
