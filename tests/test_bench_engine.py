"""bench/engine.py's fairness rules, checked on tiny models (timings are not asserted):
both sides do the same work per scenario (same file reads, same final weights), the memory
columns count what each side really holds, "same stack again" is never shown as a ratio, and
--write-docs replaces only the engine section of docs/BENCHMARKS.md."""
import tempfile

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("peft")

from bench import engine as bench  # noqa: E402


@pytest.fixture(scope="module")
def setup():
    unet, te = bench.build_models(quick=True)
    bench.quiet_diffusers_logs()
    with tempfile.TemporaryDirectory() as d:
        files = {n: bench.make_lora_file(d, unet, te, n, 4, seed=i + 1) for i, n in enumerate(bench.PLAN)}
        yield unet, te, files


def _state(unet, te):
    out = {}
    for prefix, model in (("", unet), ("te.", te)):
        for k, v in model.state_dict().items():
            if "lora_" not in k:
                out[prefix + k.replace(".base_layer", "")] = v.detach().float().clone()
    return out


def _lora_bytes(path, with_alpha=True):
    from safetensors.torch import load_file

    return sum(v.numel() * v.element_size() for k, v in load_file(path).items()
               if with_alpha or not k.endswith("alpha"))


def test_both_sides_read_the_same_files_and_hold_what_they_say(setup):
    unet, te, files = setup
    ours = bench.run_round(bench.OursSide(unet, te, files), bench.Timer("ours"))
    theirs = bench.run_round(bench.DiffusersSide(unet, te, files), bench.Timer("diffusers"))
    assert list(ours["reads"]) == list(theirs["reads"]) == bench.ORDER
    # the same file reads in every scenario: stack 2 re-reads L1 on neither side
    assert ours["reads"] == theirs["reads"]
    assert ours["reads"]["load+apply one"] == ours["reads"]["switch"] == 1
    assert ours["reads"]["stack 2"] == ours["reads"]["back to stack 2"] == 0
    assert ours["reads"]["stack 5"] == 3
    assert sum(ours["reads"].values()) == len(files)  # each file read once per round

    l1 = files["L1"]
    mine, other = ours["memory"], theirs["memory"]
    for k in bench.ORDER[:-1]:
        assert mine[k]["total"] > 0 and mine[k]["W0 backups"] > 0 and other[k]["total"] > 0
        assert mine[k]["total"] == mine[k]["W0 backups"] + mine[k]["parsed files"] + mine[k]["factor copies"]
    # diffusers+PEFT after load+apply one: exactly L1's lora_A/lora_B (same dtype as the file)
    assert other["load+apply one"]["total"] == _lora_bytes(l1, with_alpha=False)
    assert mine["load+apply one"]["parsed files"] == _lora_bytes(l1)
    # after stack 5 every adapter is resident on both sides
    all_files = sum(_lora_bytes(f, with_alpha=False) for f in files.values())
    assert other["stack 5"]["total"] == all_files
    assert mine["stack 5"]["parsed files"] == sum(_lora_bytes(f) for f in files.values())
    # restore: diffusers unloads everything, lora_core frees its backups and keeps its cache
    assert other["restore"]["total"] == 0
    assert mine["restore"]["W0 backups"] == 0 and mine["restore"]["factor copies"] == 0
    assert mine["restore"]["parsed files"] == mine["stack 5"]["parsed files"]


def test_both_sides_compute_the_same_stack(setup):
    """Same request, same result: diffusers gets L2's te and unet weights separately, as lora_core does."""
    unet, te, files = setup
    w0 = _state(unet, te)
    ours = bench.OursSide(unet, te, files)
    ours.apply(bench.S2_REWEIGHTED)
    mine = _state(unet, te)
    ours.restore()
    theirs = bench.DiffusersSide(unet, te, files)
    theirs.apply(bench.S2_REWEIGHTED)
    other = _state(unet, te)
    theirs.restore()
    assert mine.keys() == other.keys()
    changed = 0
    for k in mine:
        delta = (mine[k] - w0[k]).abs().max()
        diff = (mine[k] - other[k]).abs().max()
        if delta == 0:
            assert diff == 0, k
        else:
            changed += 1
            assert diff <= 0.1 * delta, (k, float(diff), float(delta))  # fp16 rounding of small deltas
    assert changed > 0
    assert any(k.startswith("te.") and (mine[k] != w0[k]).any() for k in mine)


def _fake(times, memory_total):
    zero = {"total": 0, "W0 backups": 0, "parsed files": 0, "factor copies": 0}
    return {"times": {k: times for k in bench.ORDER}, "reads": {k: 0 for k in bench.ORDER},
            "memory": {k: dict(zero, total=memory_total, **{"W0 backups": memory_total}) for k in bench.ORDER}}


def test_report_shows_same_stack_again_without_a_ratio_and_memory_columns():
    meta = {"command": "x", "date": "d", "machine": "m", "size": "s", "repeat": 2,
            "touched_tensors": 1, "touched_mb": 1.0}
    info = {"write_threads": 1, "first_patch_s": 0.01, "first_total_s": 0.02, "reweight_slots": 1,
            "stack2_slots": 2, "L2 alone": 0.01}
    comp = {torch.float32: 0.01, torch.bfloat16: 0.01, "fresh copy": 0.01}
    acc = (0.5, [1.0, 0.0, 0.0])
    text = bench.report(meta, _fake(0.001, 704_000_000), {"stack 2": 0.1}, _fake(0.5, 25_000_000), 0.01, comp,
                        acc, acc, info, "bit for bit")
    header = next(line for line in text.splitlines() if line.startswith("| scenario"))
    assert "files read (lora_core / diffusers)" in header and "held after: lora_core" in header
    assert "held after: diffusers+PEFT" in header
    row = next(line for line in text.splitlines() if line.startswith("| same stack again |"))
    assert "no ratio" in row and "(re-fuse)" in row and "×" not in row
    stack2 = next(line for line in text.splitlines() if line.startswith("| stack 2 |"))
    assert "500.0×" in stack2 and "704 MB (704 MB)" in stack2 and "| 25 MB |" in stack2


def test_write_docs_replaces_only_the_engine_section(tmp_path, monkeypatch):
    doc = tmp_path / "BENCHMARKS.md"
    doc.write_text(f"# Benchmarks\n\n## Library\n\nkept\n\n{bench.START}\n{bench.HEADING}\n\nold\n{bench.END}\n\n"
                   "### On a GPU\n\nkept too\n")
    monkeypatch.setattr(bench, "DOC", doc)
    bench.write_doc("new table")
    text = doc.read_text()
    assert "new table" in text and "old" not in text
    assert "## Library\n\nkept" in text and "### On a GPU\n\nkept too" in text
    assert text.count(bench.START) == 1 and text.count(bench.END) == 1
