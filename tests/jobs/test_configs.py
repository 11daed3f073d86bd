from prune_recover.jobs.configs import cpu_precision

FLAGS = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f {extra}\nbogomips\t: 4000\n"


def test_cpu_precision_is_bf16_only_with_bfloat16_instructions(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    for extra, expected in [("avx512_bf16", "bf16-mixed"), ("amx_bf16 amx_tile", "bf16-mixed"), ("", "32-true")]:
        cpuinfo.write_text(FLAGS.format(extra=extra))
        assert cpu_precision(cpuinfo) == expected
    assert cpu_precision(tmp_path / "missing") == "32-true"  # not Linux: float32
