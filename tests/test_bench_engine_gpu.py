"""bench/engine_gpu.py runs end to end (on the CPU, tiny models): the GPU session that has a device
for 15 minutes must not find a broken script. The timings are not asserted, the correctness is:
restore is bit for bit and every scenario is measured against the memory floor."""
import pytest

from bench import engine_gpu


def test_gpu_bench_plumbing_on_cpu(capsys):
    assert engine_gpu.main(["--device", "cpu", "--quick", "--repeat", "1", "--no-diffusers"]) == 0
    out = capsys.readouterr().out
    assert "lora_core leaves bit for bit" in out
    for scenario in ("load+apply one", "switch", "stack 2", "change one weight", "restore"):
        assert f"| {scenario} |" in out


def test_gpu_bench_refuses_a_missing_device(capsys):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")  # CI has none: the refusal path runs there
    assert engine_gpu.main(["--device", "cuda", "--quick"]) == 2
    assert "no CUDA device" in capsys.readouterr().out
