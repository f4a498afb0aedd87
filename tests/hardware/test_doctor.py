import json
import os
import subprocess
import sys

import pytest
import torch

import hpctrain
from hpctrain.hardware import (
    Plan,
    advise,
    cpu_info,
    detect_launcher,
    gpu_infos,
    gpu_precision,
    make_plan,
    memory_info,
    parse_cpuinfo,
    parse_meminfo,
    physical_core_count,
)
from hpctrain.hardware.launcher import NO_LAUNCHER

from fake_machines import SAPPHIRE_RAPIDS_CPUINFO, SKYLAKE_CPUINFO, cpu as _cpu, fake_gpu as _fake_gpu, machine as _machine

GRAVITON_CPUINFO = """\
processor\t: 0
BogoMIPS\t: 2100.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid bf16 sve
CPU implementer\t: 0x41
"""

MEMINFO = """\
MemTotal:       16318480 kB
MemFree:         1234567 kB
MemAvailable:   12000000 kB
Buffers:          204800 kB
HugePages_Total:       0
"""


def _no_launcher_env():
    launcher_prefixes = (
        "RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_", "TORCHELASTIC_", "SLURM_", "OMPI_", "PMI_", "MV2_", "MPI_"
    )
    return {key: value for key, value in os.environ.items() if not key.startswith(launcher_prefixes)}


def _run_doctor(*args, env=None):
    result = subprocess.run(
        [sys.executable, "-m", "hpctrain.cli", "doctor", *args], capture_output=True, text=True, timeout=120, env=env
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


# ---------------------------------------------------------------------------------------- CPU


def test_cpuinfo_with_bf16_and_amx_reports_them():
    identity = parse_cpuinfo(SAPPHIRE_RAPIDS_CPUINFO)
    assert identity.model == "Intel(R) Xeon(R) Platinum 8480+"
    assert identity.vendor == "GenuineIntel"
    features = identity.features
    assert features.avx2 and features.fma and features.avx512f
    assert features.avx512_bf16 and features.amx_tile and features.amx_bf16
    assert features.bf16_hardware


def test_cpuinfo_without_bf16_reports_it_absent():
    features = parse_cpuinfo(SKYLAKE_CPUINFO).features
    assert features.avx512f and features.avx2
    assert not features.avx512_bf16 and not features.amx_tile and not features.amx_bf16
    assert not features.bf16_hardware


def test_a_feature_missing_on_one_cpu_counts_as_missing():
    first_cpu, _ = SAPPHIRE_RAPIDS_CPUINFO.rsplit("flags", 1)
    features = parse_cpuinfo(first_cpu + "flags\t\t: fpu sse sse2 avx fma avx2 avx512f\n").features
    assert features.avx512f and not features.avx512_bf16 and not features.amx_tile


def test_non_x86_cpuinfo_leaves_features_unknown():
    identity = parse_cpuinfo(GRAVITON_CPUINFO)
    assert identity.features is None and identity.model is None


def test_cpu_info_reads_the_file_it_is_given(tmp_path):
    path = tmp_path / "cpuinfo"
    path.write_text(SKYLAKE_CPUINFO)
    cpu = cpu_info(str(path))
    assert cpu.model == "Intel(R) Xeon(R) Gold 6148 CPU @ 2.40GHz"
    assert cpu.features.avx512f and not cpu.features.avx512_bf16
    assert cpu.pytorch_kernels == torch.backends.cpu.get_cpu_capability()
    if hasattr(os, "sched_getaffinity"):
        assert cpu.logical_cpus_usable == len(os.sched_getaffinity(0))


def test_cpu_info_without_cpuinfo_still_counts_cpus(tmp_path):
    cpu = cpu_info(str(tmp_path / "missing"))
    assert cpu.features is None and cpu.model is None
    assert cpu.physical_cores >= 1 and cpu.logical_cpus_usable >= 1


# ------------------------------------------------------------------------------------- memory


def test_meminfo_gives_exact_bytes():
    memory = parse_meminfo(MEMINFO)
    assert memory.total_bytes == 16318480 * 1024
    assert memory.available_bytes == 12000000 * 1024


def test_meminfo_without_memavailable_does_not_guess():
    memory = parse_meminfo("MemTotal:  2048 kB\nMemFree:  1024 kB\n")
    assert memory.total_bytes == 2048 * 1024 and memory.available_bytes is None


def test_memory_info_falls_back_to_sysconf(tmp_path):
    memory = memory_info(str(tmp_path / "missing"))
    if hasattr(os, "sysconf") and "SC_PHYS_PAGES" in os.sysconf_names:
        assert memory.total_bytes == os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


# --------------------------------------------------------------------------------------- GPUs


@pytest.mark.parametrize(
    "capability, bf16, tf32, fp8",
    [
        ((6, 0), False, False, False),  # Pascal
        ((7, 0), False, False, False),  # Volta
        ((7, 5), False, False, False),  # Turing
        ((8, 0), True, True, False),  # A100
        ((8, 6), True, True, False),  # RTX 30xx
        ((8, 9), True, True, True),  # Ada
        ((9, 0), True, True, True),  # H100
        ((10, 0), True, True, True),  # Blackwell
    ],
)
def test_gpu_precision_follows_compute_capability(capability, bf16, tf32, fp8):
    precision = gpu_precision(capability)
    assert (precision.bf16, precision.tf32, precision.fp8, precision.fp16) == (bf16, tf32, fp8, True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_infos_match_torch_cuda():
    gpus = gpu_infos()
    assert len(gpus) == torch.cuda.device_count()
    for gpu in gpus:
        properties = torch.cuda.get_device_properties(gpu.index)
        assert gpu.name == properties.name and gpu.total_memory_bytes == properties.total_memory
        assert gpu.compute_capability == torch.cuda.get_device_capability(gpu.index)
        assert gpu.precision.bf16 == (gpu.compute_capability >= (8, 0))


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is visible")
def test_no_cuda_means_no_gpus():
    assert gpu_infos() == ()


# ----------------------------------------------------------------------------------- launcher


def test_torchrun_environment():
    env = {"TORCHELASTIC_RUN_ID": "abc", "RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "MASTER_ADDR": "node0"}
    launcher = detect_launcher(env)
    assert (launcher.name, launcher.rank, launcher.world_size, launcher.local_rank) == ("torchrun", 3, 8, 1)
    assert "MASTER_ADDR" in launcher.variables


def test_slurm_environment():
    env = {"SLURM_JOB_ID": "4242", "SLURM_PROCID": "5", "SLURM_NTASKS": "16", "SLURM_LOCALID": "1"}
    launcher = detect_launcher(env)
    assert (launcher.name, launcher.rank, launcher.world_size, launcher.local_rank) == ("slurm", 5, 16, 1)


def test_openmpi_environment():
    env = {"OMPI_COMM_WORLD_RANK": "2", "OMPI_COMM_WORLD_SIZE": "4", "OMPI_COMM_WORLD_LOCAL_RANK": "0"}
    launcher = detect_launcher(env)
    assert (launcher.name, launcher.rank, launcher.world_size, launcher.local_rank) == ("mpi", 2, 4, 0)


def test_pmi_environment():
    launcher = detect_launcher({"PMI_RANK": "1", "PMI_SIZE": "2"})
    assert (launcher.name, launcher.rank, launcher.world_size) == ("mpi", 1, 2)


def test_no_launcher_environment():
    assert detect_launcher({"HOME": "/root", "PATH": "/usr/bin"}) == NO_LAUNCHER


def test_inner_launcher_wins_over_slurm():
    slurm = {"SLURM_JOB_ID": "1", "SLURM_PROCID": "0", "SLURM_NTASKS": "1"}
    assert detect_launcher({**slurm, "RANK": "2", "WORLD_SIZE": "4"}).name == "torchrun"
    mpi = detect_launcher({**slurm, "OMPI_COMM_WORLD_RANK": "3", "OMPI_COMM_WORLD_SIZE": "4"})
    assert (mpi.name, mpi.rank) == ("mpi", 3)


def test_malformed_rank_is_reported_not_raised():
    launcher = detect_launcher({"RANK": "first", "WORLD_SIZE": "2"})
    assert launcher.rank is None and launcher.world_size == 2
    assert launcher.problems == ("RANK='first' is not a whole number",)


# ------------------------------------------------------------------------------------- advice


def test_cpu_advice_with_bf16_hardware():
    plan = make_plan(device="cpu")
    advice = advise(_machine(_cpu(SAPPHIRE_RAPIDS_CPUINFO)), plan)
    assert any(line.startswith(f"no GPU: training runs on {plan.threads} CPU thread") for line in advice)
    assert any("bfloat16 autocast can pay on this CPU" in line and "AMX BF16" in line for line in advice)
    assert "no bf16 hardware: training stays in float32" not in advice


def test_cpu_advice_without_bf16_hardware():
    advice = advise(_machine(_cpu(SKYLAKE_CPUINFO)), make_plan(device="cpu"))
    assert "no bf16 hardware: training stays in float32" in advice
    assert not any("bfloat16 autocast can pay" in line for line in advice)


def test_cpu_advice_names_idle_hyperthreads():
    advice = advise(_machine(_cpu(SKYLAKE_CPUINFO, physical_cores=4, logical=8)), make_plan(device="cpu", threads=4))
    assert any(line.startswith("8 logical CPUs sit on 4 physical cores") for line in advice)
    assert any("training runs on 4 CPU threads (one per physical core)" in line for line in advice)


def test_gpu_advice_uses_the_plan_device_and_capability():
    plan = Plan(device=torch.device("cuda", 0), threads=1)
    advice = advise(_machine(_cpu(SKYLAKE_CPUINFO), gpus=[_fake_gpu(0, (7, 0))]), plan)
    assert advice[0].startswith("training runs on cuda:0 (Test GPU, 40.0 GiB)")
    assert "no bf16 tensor cores (compute capability 7.0 < 8.0): training stays in float32" in advice
    assert not any("CPU" in line for line in advice)


def test_several_gpus_without_nccl_say_gloo():
    plan = Plan(device=torch.device("cuda", 0), threads=1)
    gpus = [_fake_gpu(0, (9, 0)), _fake_gpu(1, (9, 0))]
    without_nccl = advise(_machine(_cpu(SKYLAKE_CPUINFO), gpus=gpus, nccl=False), plan)
    with_nccl = advise(_machine(_cpu(SKYLAKE_CPUINFO), gpus=gpus, nccl=True), plan)
    assert any("no NCCL" in line and "gloo" in line for line in without_nccl)
    assert not any("gloo" in line for line in with_nccl)
    assert any(line.startswith("bfloat16 autocast can pay on this GPU") for line in with_nccl)


def test_launcher_advice_states_rank_and_world_size():
    launcher = detect_launcher({"TORCHELASTIC_RUN_ID": "x", "RANK": "1", "WORLD_SIZE": "4"})
    advice = advise(_machine(_cpu(SKYLAKE_CPUINFO), launcher=launcher), make_plan(device="cpu"))
    expected = ("started by torchrun as rank 1 of 4; a model compiled inside tf.distribute.MirroredStrategy().scope() "
                "(or MultiWorkerMirroredStrategy) trains as one replica of the group, any other on its own")
    assert expected in advice


# ----------------------------------------------------------------------------------- command


def test_doctor_json_matches_this_machine():
    env = {**_no_launcher_env(), "TORCHELASTIC_RUN_ID": "t", "RANK": "2", "WORLD_SIZE": "3", "LOCAL_RANK": "0"}
    report = json.loads(_run_doctor("--json", env=env))
    assert report["hpctrain_version"] == hpctrain.__version__
    assert report["cpu"]["physical_cores"] == physical_core_count()
    assert report["pytorch"]["version"] == torch.__version__
    assert report["pytorch"]["cuda"] == torch.version.cuda
    assert len(report["gpus"]) == (torch.cuda.device_count() if torch.cuda.is_available() else 0)
    assert report["launcher"] == {
        "name": "torchrun", "rank": 2, "world_size": 3, "local_rank": 0,
        "variables": ["TORCHELASTIC_RUN_ID", "RANK", "WORLD_SIZE", "LOCAL_RANK"], "problems": [],
    }
    assert report["plan"]["threads"] == make_plan().threads
    assert report["plan"]["device"] == str(make_plan().device)
    assert "started by torchrun as rank 2 of 3" in " ".join(report["advice"])


def test_doctor_text_has_every_section():
    text = _run_doctor(env=_no_launcher_env())
    for title in ("Machine / CPU", "Memory", "GPUs", "PyTorch", "Launcher", "Plan", "Advice"):
        assert f"\n{title}\n" in text
    assert make_plan().explain().splitlines()[0] in text
    assert f"version:      {torch.__version__}" in text
    assert "none (no torchrun, MPI or Slurm variables in the environment)" in text
