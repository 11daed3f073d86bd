import pytest
import torch

from prune_recover.tiny_models import tiny_random
from prune_recover.training.master_weights import MasterWeights
from prune_recover.training.recovery_module import RecoveryModule
from tests.conftest import tiny_data, tiny_trainer


def test_a_bf16_model_trains_on_float32_masters_under_bf16_mixed(wikitext_dir, tmp_path):
    model = tiny_random("llama")[0].to(torch.bfloat16)
    module = RecoveryModule(model, optimizer=lambda params: torch.optim.AdamW(params, lr=1e-5))
    before = {name: p.detach().float().clone() for name, p in module.model.named_parameters()}
    trainer = tiny_trainer(tmp_path, callbacks=[MasterWeights("float32")], max_steps=2, precision="bf16-mixed")
    trainer.fit(module, datamodule=tiny_data(wikitext_dir))
    params = dict(module.model.named_parameters())
    assert {p.dtype for p in params.values()} == {torch.float32}
    assert {s["exp_avg"].dtype for s in trainer.optimizers[0].state.values()} == {torch.float32}
    # updates of ~1e-5 relative size survive in float32; in bf16 (8 mantissa bits) they would round away
    changed = [n for n, p in params.items() if not torch.equal(p.detach(), before[n])]
    assert changed and all(
        not torch.equal(p.detach().bfloat16().float(), p.detach()) for p in map(params.get, changed[:3])
    )


@pytest.mark.parametrize("dtype", ["float33", "int8"])  # int8 would have cast every weight to integers at setup
def test_an_unknown_or_integer_dtype_is_refused(dtype):
    with pytest.raises(ValueError, match="must name a floating-point torch dtype"):
        MasterWeights(dtype)
