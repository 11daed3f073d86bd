"""bench/layer_reconstruction.py on a tiny model: its first step is the package's sequential activation + refit,
the model keeps one width, and each layer's fit lowers the error it minimises."""

import pytest
import torch

from bench.layer_reconstruction import prune_and_reconstruct
from prune_recover.arch import gated_mlps
from prune_recover.pruning.pruner import Pruner
from prune_recover.tiny_models import tiny_random

WIDTH = 80  # of the tiny model's 128


def tiny_and_batches():
    base, _ = tiny_random(seed=0)
    generator = torch.Generator().manual_seed(0)
    batches = [torch.randint(3, base.config.vocab_size, (2, 64), generator=generator) for _ in range(4)]
    return base.float().eval(), batches


@pytest.mark.parametrize("target", ["local", "carried"])
def test_every_layer_ends_closer_to_its_target_and_the_model_keeps_one_width(target):
    base, batches = tiny_and_batches()
    model, errors = prune_and_reconstruct(base, batches, WIDTH, target, epochs=8, lr=1e-3, batch=128)

    assert {mlp.intermediate_size for mlp in gated_mlps(model)} == {WIDTH} == {model.config.intermediate_size}
    assert {mlp.intermediate_size for mlp in gated_mlps(base)} == {base.config.intermediate_size}  # a copy was pruned
    assert len(errors) == len(gated_mlps(model))
    assert all(after < before for before, after in errors), errors


def test_without_epochs_it_is_the_packages_sequential_activation_and_refit():
    base, batches = tiny_and_batches()
    bench_model, errors = prune_and_reconstruct(base, batches, WIDTH, "local", epochs=0, lr=1e-3)
    package_model, _ = tiny_random(seed=0)
    package_model = package_model.float().eval()
    Pruner(importance="activation", ratio=0.5, calibration_mode="sequential").prune(package_model, batches, WIDTH)

    assert all(before == after for before, after in errors)
    for ours, theirs in zip(bench_model.state_dict().items(), package_model.state_dict().items(), strict=True):
        assert ours[0] == theirs[0] and ours[1].shape == theirs[1].shape, ours[0]
        torch.testing.assert_close(ours[1], theirs[1], rtol=1e-4, atol=1e-5, msg=ours[0])
