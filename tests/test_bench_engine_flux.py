"""bench/engine_flux.py end to end on a tiny Flux-structured model (2 double + 2 single blocks,
width 32; timings are not asserted): every scenario runs on the three sides with the same file
reads, lora_core restores bit for bit with and without W0 copies, the merge check holds against
diffusers+PEFT's own exact merge and fails when the sides disagree, and the kohya files carry the
fused tensors at the model's widths, which diffusers' converter reads through the width shim."""
import contextlib
import io
from types import SimpleNamespace

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("peft")

from bench import engine_flux, flux_fixtures as fx  # noqa: E402
from bench.engine import ORDER  # noqa: E402


@pytest.fixture(scope="module")
def run():
    out, err = io.StringIO(), io.StringIO()
    threads = torch.get_num_threads()  # --threads sets torch's global setting: give it back to the other tests
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = engine_flux.main(["--quick", "--repeat", "1", "--warmup", "1", "--threads", "1"])
    finally:
        torch.set_num_threads(threads)
    return rc, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("flux")
    model = fx.build_flux(fx.flux_config(quick=True), torch.device("cpu"))
    ckpt = str(d / "flux.safetensors")
    engine_flux.save_checkpoint(model, ckpt)
    files = {n: fx.make_flux_lora(str(d), model, n, 4, seed=i + 1) for i, n in enumerate(fx.FLUX_PLAN)}
    return model, files, ckpt


def _cells(out, scenario):
    row = next(line for line in out.splitlines() if line.startswith(f"| {scenario} |"))
    return [c.strip() for c in row.strip("|").split("|")]


def test_every_scenario_runs_on_the_three_sides_with_the_same_reads(run):
    rc, out, err = run
    assert rc == 0, out + err
    assert "2 double + 2 single blocks, hidden 32" in out
    assert "lora_core: bit for bit; lora_core, W0 from checkpoint: bit for bit; diffusers:" in out
    for side in (engine_flux.OURS, engine_flux.FROM_FILE, engine_flux.THEIRS):
        assert err.count(f"  {side} (warm-up): load+apply one:") == 1
        assert err.count(f"  {side}: load+apply one:") == 1
    for scenario in ORDER:
        cells = _cells(out, scenario)
        assert len(cells) == 13 and "-" not in cells[:9], cells
    reads = {"load+apply one": "1 / 1", "switch": "1 / 1", "stack 2": "0 / 0", "stack 5": "3 / 3",
             "back to stack 2": "0 / 0", "restore": "0 / 0"}
    for scenario, expected in reads.items():
        assert _cells(out, scenario)[9] == expected
    same = _cells(out, "same stack again")
    assert "(re-fuse)" in same[6] and same[8] == "no ratio"


def test_w0_from_the_checkpoint_holds_no_copies(run):
    _rc, out, _err = run
    for scenario in ("load+apply one", "stack 5", "change one weight"):
        cells = _cells(out, scenario)
        copies, from_file = cells[10], cells[11]
        assert not copies.endswith("(0.0 kB)"), copies  # the copies side keeps W0 backups ...
        assert from_file.endswith("(0.0 kB)"), from_file  # ... the checkpoint side none
    assert _cells(out, "restore")[10].endswith("(0.0 kB)")


def test_merge_check_passes_in_the_run(run):
    _rc, out, _err = run
    line = next(line for line in out.splitlines() if line.startswith("Merge check"))
    assert "CHECK FAILED" not in line and "weights only lora_core changed: 0" in line
    ours = float(line.split("lora_core within ")[1].split(" ulp")[0])
    assert ours <= engine_flux.MAX_ULPS
    assert "kohya_linear1_at_width" in out  # the narrow-width shim is declared


def test_merge_check_fails_when_the_sides_merge_differently(tiny, monkeypatch):
    model, files, ckpt = tiny
    sums = engine_flux.checksums(model)
    good = engine_flux.merge_check(model, files, ckpt, sums)
    assert engine_flux.check_passed(good) and good["tensors"] > 0
    assert good["ours_ulps"] <= 0.6  # one rounding (0.5 ulp) plus the fp32 oracle's noise
    monkeypatch.setattr(engine_flux.FluxDiffusersSide, "adapter_weight", staticmethod(lambda te, unet: unet / 2))
    bad = engine_flux.merge_check(model, files, ckpt, sums)
    assert not engine_flux.check_passed(bad) and bad["ours_ulps"] > 4
    assert engine_flux.differing(model, sums) == []  # the check leaves the checkpoint's W0 behind


def test_kohya_files_are_fused_and_diffusers_reads_them_through_the_width_shim(tiny):
    from diffusers.loaders import FluxLoraLoaderMixin
    from safetensors.torch import load_file

    model, files, _ckpt = tiny
    h = fx.hidden(fx.flux_config(quick=True))
    kohya = load_file(files["L1"])
    up = kohya["lora_unet_single_blocks_1_linear1.lora_up.weight"]
    down = kohya["lora_unet_single_blocks_1_linear1.lora_down.weight"]
    assert up.shape[0] == 7 * h and kohya["lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight"].shape[0] == 3 * h
    assert "transformer.transformer_blocks.0.attn.to_q.lora_A.weight" in load_file(files["L2"])
    with pytest.raises(AssertionError):  # what the shim is for: diffusers' fixed 3072/12288 split
        FluxLoraLoaderMixin.lora_state_dict(files["L1"])
    with fx.kohya_linear1_at_width(h):
        converted = FluxLoraLoaderMixin.lora_state_dict(files["L1"])
    p = "transformer.single_transformer_blocks.1"
    # alpha = rank/2: diffusers folds 1/2 into lora_A; the parts get lora_up's row slices
    parts = (("attn.to_q", slice(0, h)), ("attn.to_v", slice(2 * h, 3 * h)), ("proj_mlp", slice(3 * h, 7 * h)))
    for part, rows in parts:
        assert torch.equal(converted[f"{p}.{part}.lora_B.weight"], up[rows])
        assert torch.equal(converted[f"{p}.{part}.lora_A.weight"], down * 0.5)
    assert fx.FULL_HIDDEN == 3072
    with fx.kohya_linear1_at_width(fx.FULL_HIDDEN):  # at Flux's own width: diffusers' converter untouched
        from diffusers.loaders import lora_pipeline
        from diffusers.loaders.lora_conversion_utils import _convert_kohya_flux_lora_to_diffusers
        assert lora_pipeline._convert_kohya_flux_lora_to_diffusers is _convert_kohya_flux_lora_to_diffusers


def test_a_lora_the_engine_left_out_stops_the_bench():
    refused = SimpleNamespace(loras=[SimpleNamespace(name="L1", refused="family sd3, model flux", unmatched=0)],
                              warnings=[], slots_recomputed=0)
    with pytest.raises(SystemExit, match="did not apply the whole LoRA"):
        engine_flux.check_applied(refused)
    partial = SimpleNamespace(loras=[SimpleNamespace(name="L1", refused=None, unmatched=3)], warnings=[],
                              slots_recomputed=10)
    with pytest.raises(SystemExit):
        engine_flux.check_applied(partial)


def test_bad_arguments_are_refused(capsys):
    assert engine_flux.main(["--width-div", "5"]) == 2
    assert "divide Flux's 24 heads" in capsys.readouterr().out
    assert engine_flux.main(["--blocks", "3"]) == 2
    if not torch.cuda.is_available():
        assert engine_flux.main(["--device", "cuda"]) == 2
        assert "no CUDA device" in capsys.readouterr().out


def test_write_docs_replaces_only_the_flux_section_of_its_device(tmp_path, monkeypatch):
    from bench import engine

    start, end = engine_flux.MARKERS["cpu"]
    gpu_start, gpu_end = engine_flux.MARKERS["cuda"]
    doc = tmp_path / "BENCHMARKS.md"
    doc.write_text(f"# Benchmarks\n\n{engine.START}\n{engine.HEADING}\n\nsd15 table\n{engine.END}\n\n"
                   f"{start}\n{engine_flux.HEADINGS['cpu']}\n\nplaceholder\n{end}\n\n"
                   f"{gpu_start}\n{engine_flux.HEADINGS['cuda']}\n\ngpu placeholder\n{gpu_end}\n")
    monkeypatch.setattr(engine, "DOC", doc)
    engine.write_doc("flux table", start, end, engine_flux.HEADINGS["cpu"])
    text = doc.read_text()
    assert "flux table" in text and "\nplaceholder" not in text
    assert "sd15 table" in text and "gpu placeholder" in text
    engine.write_doc("new sd15 table")  # the SD1.5 bench's own section stops at its own end marker
    text = doc.read_text()
    assert "new sd15 table" in text and "flux table" in text and text.count(start) == 1
