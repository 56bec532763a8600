"""The CPU kind that runs and benchmarks record: family, model and the widest vector path."""

import torch

from dawntrain.runtime.device import cpu_kind, cpu_kind_slug, describe, widest_isa_flag

# Two processors of /proc/cpuinfo as a 2-vCPU cloud machine shows them (fields trimmed).
ZEN5 = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 26
model\t\t: 2
model name\t: AMD EPYC
flags\t\t: fpu sse2 avx2 avx512f avx512bw avx512_bf16 avx_vnni

processor\t: 1
vendor_id\t: AuthenticAMD
cpu family\t: 26
model\t\t: 2
model name\t: AMD EPYC
flags\t\t: fpu sse2 avx2 avx512f avx512bw avx512_bf16 avx_vnni
"""
XEON_AMX = """processor\t: 0
cpu family\t: 6
model\t\t: 143
model name\t: Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz
flags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8
"""
ZEN3 = """processor\t: 0
cpu family\t: 25
model\t\t: 1
model name\t: AMD EPYC 7B13
flags\t\t: fpu sse2 avx avx2 fma
"""


def test_cpu_kind_names_the_generation_the_model_name_hides():
    assert cpu_kind(ZEN5) == "family 26 model 2, AVX-512 bf16"
    assert cpu_kind(XEON_AMX) == "family 6 model 143, AMX"
    assert cpu_kind(ZEN3) == "family 25 model 1, AVX2"


def test_cpu_kind_reads_the_model_line_not_the_model_name_line():
    # "model name" also starts with "model": the number must come from the line named "model".
    text = ZEN5.replace("model\t\t: 2\n", "", 1).replace("model name\t: AMD EPYC\n", "", 1)
    moved = "model name\t: AMD EPYC\nmodel\t\t: 2\n" + text
    assert cpu_kind(moved) == "family 26 model 2, AVX-512 bf16"


def test_cpu_kind_without_cpuinfo_is_empty_and_describe_still_names_the_threads():
    assert cpu_kind("") == ""
    assert describe(torch.device("cpu")).endswith(f"{torch.get_num_threads()} threads)")


def test_widest_isa_flag_takes_the_widest_path_the_flags_announce():
    assert widest_isa_flag(ZEN5) == "avx512_bf16"
    assert widest_isa_flag(XEON_AMX) == "amx_bf16"
    assert widest_isa_flag(ZEN3) == "avx2"
    assert widest_isa_flag("flags : fpu sse2") == ""


def test_cpu_kind_slug_names_benchmark_folders_by_path_vendor_family_and_model():
    assert cpu_kind_slug(ZEN5) == "avx512bf16-amd-f26m2"
    assert (
        cpu_kind_slug(
            XEON_AMX.replace("processor\t: 0\n", "processor\t: 0\nvendor_id\t: GenuineIntel\n")
        )
        == "amx-intel-f6m143"
    )
    # No vendor line: the family and model still tell the machines apart.
    assert cpu_kind_slug(ZEN3) == "avx2-cpu-f25m1"
    assert cpu_kind_slug("") == "cpu"
