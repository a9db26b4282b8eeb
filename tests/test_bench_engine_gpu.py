"""bench/engine_gpu.py runs end to end (on the CPU, tiny models): the GPU session that has a device
for 15 minutes must not find a broken script. The timings are not asserted, the correctness is:
restore is bit for bit, every scenario is measured against the memory floor, and both sides get
the same treatment (warm-up and best-of-N rounds, the same file reads, memory columns)."""
import pytest

from bench import engine_gpu
from bench.engine import ORDER


def _row(out, scenario):
    return next(line for line in out.splitlines() if line.startswith(f"| {scenario} |"))


def test_gpu_bench_plumbing_on_cpu(capsys):
    assert engine_gpu.main(["--device", "cpu", "--quick", "--repeat", "1", "--no-diffusers"]) == 0
    out = capsys.readouterr().out
    assert "lora_core leaves bit for bit" in out
    assert "1 untimed warm-up round(s), then best of 1" in out
    for scenario in ORDER:
        assert f"| {scenario} |" in out


def test_gpu_bench_gives_both_sides_the_same_treatment_on_cpu(capsys):
    pytest.importorskip("diffusers")
    pytest.importorskip("peft")
    assert engine_gpu.main(["--device", "cpu", "--quick", "--repeat", "2", "--warmup", "1"]) == 0
    captured = capsys.readouterr()
    out, err = captured.out, captured.err
    assert "lora_core leaves bit for bit (per-slot path: bit for bit)" in out
    assert "1 untimed warm-up round(s), then best of 2" in out
    # every side: one warm-up round, then two timed rounds, interleaved
    for side in ("lora_core", "per-slot", "diffusers"):
        assert err.count(f"  {side} (warm-up): load+apply one:") == 1
        assert err.count(f"  {side}: load+apply one:") == 2
    assert "files read (lora_core / diffusers)" in out and "held after: diffusers+PEFT" in out
    for scenario, reads in (("load+apply one", "1 / 1"), ("switch", "1 / 1"), ("stack 2", "0 / 0"),
                            ("stack 5", "3 / 3"), ("back to stack 2", "0 / 0")):
        assert f"| {reads} |" in _row(out, scenario)
    same = _row(out, "same stack again")
    assert "no ratio" in same and "(re-fuse)" in same
    cells = [c.strip() for c in _row(out, "load+apply one").strip("|").split("|")]
    assert cells[-2].endswith(")") and not cells[-2].startswith("0.0") and not cells[-1].startswith("0.0")


def test_gpu_bench_refuses_a_missing_device(capsys):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")  # CI has none: the refusal path runs there
    assert engine_gpu.main(["--device", "cuda", "--quick"]) == 2
    assert "no CUDA device" in capsys.readouterr().out
