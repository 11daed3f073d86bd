import pytest

from prune_recover.jobs.configs import compose_train_config, cpu_precision, eval_precision

FLAGS = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f {extra}\nbogomips\t: 4000\n"


def test_cpu_precision_is_bf16_only_with_bfloat16_instructions(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    for extra, expected in [("avx512_bf16", "bf16-mixed"), ("amx_bf16 amx_tile", "bf16-mixed"), ("", "32-true")]:
        cpuinfo.write_text(FLAGS.format(extra=extra))
        assert cpu_precision(cpuinfo) == expected
    assert cpu_precision(tmp_path / "missing") == "32-true"  # not Linux: float32


@pytest.mark.parametrize(
    ("trainer", "expected"),
    [("bf16-mixed", "bfloat16"), ("bf16-true", "bfloat16"), ("16-mixed", "float16"), ("32-true", "float32")],
)
def test_evaluation_computes_in_the_trainers_precision_unless_told(trainer, expected):
    assert eval_precision(trainer) == expected
    assert compose_train_config([f"trainer.precision={trainer}"]).eval.precision == expected
    pinned = compose_train_config([f"trainer.precision={trainer}", "eval.precision=float32"])
    assert pinned.eval.precision == "float32"
