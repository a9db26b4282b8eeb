"""The fast first scan: one Summarizer per scan (layout memo), batched inserts, file indexes rebuilt
after a bulk load. Every shortcut must give the same index as the plain per-file path."""
import math
import sqlite3
import sys
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).parent / "library"))
from libtest_files import kohya_lora, kohya_metadata, write_lora  # noqa: E402

from lora_core.library import Library, indexer as indexer_module, inspect_header  # noqa: E402
from lora_core.library.errors import StorageError  # noqa: E402
from lora_core.library.index_db import IndexDB  # noqa: E402
from lora_core.library.inspect_header import (  # noqa: E402
    Summarizer, detect_algorithm, family_from_header_or_names, network_dim, top_training_tags,
)

# key names that exercise every family and algorithm rule (kohya, LyCORIS, PEFT, diffusers, DiTs)
MODULES = [
    "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k",
    "lora_unet_down_blocks_1_attentions_0_transformer_blocks_1_attn1_to_q",
    "lora_unet_input_blocks_1_1_transformer_blocks_0_attn2_to_v",
    "lora_unet_output_blocks_9_1_proj_in",
    "lora_unet_down_blocks_0_resnets_0_conv1",
    "lora_unet_mid_block_attentions_0_proj_out",
    "lora_te_text_model_encoder_layers_0_self_attn_q_proj",
    "lora_te1_text_model_encoder_layers_0_mlp_fc1",
    "lora_te2_text_model_encoder_layers_0_self_attn_k_proj",
    "lora_unet_double_blocks_0_img_attn_qkv",
    "lora_unet_joint_blocks_0_x_block_attn_qkv",
    "transformer.single_transformer_blocks.0.attn.to_q",
    "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_v",
    "text_encoder.text_model.encoder.layers.0.self_attn.q_proj",
    "lycoris_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k",
]
SUFFIXES = [".lora_down.weight", ".lora_up.weight", ".alpha", ".lora_A.weight", ".lora_B.weight",
            ".hada_w1_a", ".hada_w1_b", ".lokr_w1", ".oft_blocks", ".dora_scale", ".diff", ".w_norm",
            ".lora_mid.weight"]
SHAPES = [(), (4,), (4, 768), (4, 1024), (4, 2048), (4, 1280), (8, 4), (4, 320, 3, 3), (4, 320, 1, 1),
          (2, 4, 4, 4), (16, 640)]
METADATA = [{}, {"ss_base_model_version": "sdxl_base_v1-0"}, {"ss_v2": "True"},
            {"modelspec.architecture": "stable-diffusion-v1"}, {"ss_network_dim": "32"},
            {"ss_output_name": "x", "modelspec.title": "t", "modelspec.trigger_phrase": "go"}]

header_st = st.dictionaries(
    st.tuples(st.sampled_from(MODULES), st.sampled_from(SUFFIXES)).map("".join),
    st.sampled_from(SHAPES).map(lambda s: {"dtype": "F16", "shape": list(s), "data_offsets": [0, 0]}),
    max_size=12,
)


def reference_summary(header, metadata):
    """The per-file answer without any memo (what the index stored before the Summarizer)."""
    summary = inspect_header.summarize(header, metadata)
    algorithm, algorithms = detect_algorithm(header)
    summary.update(family=family_from_header_or_names(header, metadata), algorithm=algorithm, algorithms=algorithms,
                   network_dim=network_dim(header, metadata))
    return summary


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(header_st, st.sampled_from(METADATA)), min_size=1, max_size=12))
def test_one_summarizer_for_many_files_gives_the_per_file_answers(files):
    summarizer = Summarizer()
    # each file twice, the second time as a fresh copy (a known layout from another file object)
    for header, metadata in files + [({k: dict(v, shape=list(v["shape"])) for k, v in h.items()}, m)
                                     for h, m in files]:
        assert summarizer.summarize(header, metadata) == reference_summary(header, metadata)


def test_same_names_other_shapes_is_another_layout():
    summarizer = Summarizer()
    k = MODULES[0]

    def header(in_dim, kernel):
        return {f"{k}.lora_down.weight": {"shape": [4, in_dim, *kernel]}, f"{k}.lora_up.weight": {"shape": [8, 4]}}

    assert summarizer.summarize(header(768, ()), {})["family"] == "sd1"
    assert summarizer.summarize(header(2048, ()), {})["family"] == "sdxl"
    assert summarizer.summarize(header(768, (3, 3)), {})["algorithm"] == "locon"
    assert summarizer.summarize(header(768, ()), {})["algorithm"] == "lora"
    # the tensors say nothing about the family: the metadata decides, per file
    plain = {"lora_unet_mid_block_resnets_0_conv1.lora_down.weight": {"shape": [4, 16]}}
    assert summarizer.summarize(plain, {"ss_base_model_version": "sdxl_base_v1-0"})["family"] == "sdxl"
    assert summarizer.summarize(plain, {"ss_v2": "True"})["family"] == "sd2"
    assert summarizer.summarize(plain, {})["family"] == "unknown"


def test_layout_memo_is_bounded():
    summarizer = Summarizer()
    for i in range(Summarizer.MAX_LAYOUTS + 10):
        summarizer.summarize({f"m{i}.lora_down.weight": {"shape": [4, 8]}}, {})
    assert summarizer._layout_count <= Summarizer.MAX_LAYOUTS


def counter_top_tags(freq, limit=inspect_header.TOP_TAGS):
    total = Counter()
    for tags in freq.values():
        if isinstance(tags, dict):
            for tag, count in tags.items():
                tag = str(tag).strip()
                if tag and isinstance(count, (int, float)) and (not isinstance(count, float) or math.isfinite(count)):
                    total[tag[:200]] += int(count)
    return total.most_common(limit)


count_st = st.one_of(st.integers(-5, 100), st.floats(allow_nan=True, allow_infinity=True), st.booleans(),
                     st.text(max_size=3), st.none())
tag_st = st.one_of(st.sampled_from(["smile", " smile", "smile ", "1girl", "", "  ", "x" * 205, "x" * 201 + " "]),
                   st.text(max_size=6))


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.text(max_size=4), st.one_of(st.dictionaries(tag_st, count_st, max_size=8), st.integers()),
                       max_size=3))
def test_top_tags_match_a_plain_counter(freq):
    import json
    metadata = {"ss_tag_frequency": json.dumps(freq)}  # NaN/Infinity survive as JSON extensions
    assert top_training_tags(metadata) == counter_top_tags(json.loads(metadata["ss_tag_frequency"]))


def test_non_finite_tag_counts_do_not_break_a_scan(tmp_path):
    root = tmp_path / "loras"
    write_lora(root / "odd.safetensors", metadata={"ss_tag_frequency": '{"a": {"sky": Infinity, "sea": NaN, "x": 2}}'})
    with Library([root], tmp_path / "data") as lib:
        report = lib.scan()
        assert report.errors == 0
        assert lib.find("odd").summary["top_tags"] == [["x", 2]]


# -- bulk loads --------------------------------------------------------------------------------

def make_library(root, n, prefix="f"):
    for i in range(n):
        family = {"context_dim": 2048, "te2": True} if i % 3 == 0 else {}
        write_lora(root / f"g{i % 3}" / f"{prefix}{i:03d}.safetensors", kohya_lora(**family),
                   kohya_metadata(f"{prefix}alias{i:03d}", base="sdxl_base_v1-0" if i % 3 == 0 else "sd_v1"))


def index_names(db_path):
    conn = sqlite3.connect(db_path)
    try:
        return sorted(r[0] for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type='index' AND tbl_name='files'"))
    finally:
        conn.close()


def snapshot(lib):
    """Everything a user sees of each entry, and what each search finds."""
    entries = {e.rel_name: {k: v for k, v in e.to_dict().items() if k not in ("path", "root")} for e in lib.all()}
    searches = {q: [e.rel_name for e in lib.search(q, page_size=100, sort=s).items]
                for q, s in [("", "name"), ("alias007", "name"), ("1girl", "date"), ("g1", "size"), ("f01", "name")]}
    return entries, searches


@pytest.fixture
def bulk_threshold(monkeypatch):
    monkeypatch.setattr(indexer_module, "BULK_MIN_ROWS", 5)
    monkeypatch.setattr(indexer_module, "BULK_WRITE_BATCH", 4)  # several transactions


def test_bulk_scan_builds_the_same_index_as_row_by_row(tmp_path, bulk_threshold, monkeypatch):
    root = tmp_path / "loras"
    make_library(root, 12)
    with Library([root], tmp_path / "bulk") as lib:
        begun = []
        real_begin = lib.db.begin_bulk
        monkeypatch.setattr(lib.db, "begin_bulk", lambda: begun.append(1) or real_begin())
        assert lib.scan().read == 12 and begun == [1]
        bulk = snapshot(lib)
    monkeypatch.setattr(indexer_module, "BULK_MIN_ROWS", 10**9)
    with Library([root], tmp_path / "plain") as lib:
        lib.scan()
        plain = snapshot(lib)
    assert bulk == plain
    assert bulk[1]["alias007"] == ["g1/f007"] and len(bulk[1][""]) == 12
    # the dropped indexes are all back, and every row has its details and full-text row
    assert index_names(tmp_path / "bulk" / "library.sqlite3") == index_names(tmp_path / "plain" / "library.sqlite3")
    conn = sqlite3.connect(tmp_path / "bulk" / "library.sqlite3")
    ids = [r[0] for r in conn.execute("SELECT id FROM files ORDER BY id")]
    assert ids == [r[0] for r in conn.execute("SELECT id FROM details ORDER BY id")]
    assert ids == [r[0] for r in conn.execute("SELECT rowid FROM files_fts ORDER BY rowid")]
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()


def test_bulk_scan_after_deletions_and_with_rows_of_another_root(tmp_path, bulk_threshold):
    """Ids handed out in bulk never collide with old rows; a path another library (nested root)
    already indexed is updated in place, not inserted twice."""
    root = tmp_path / "loras"
    make_library(root, 6, prefix="old")
    data = tmp_path / "data"
    with Library([root / "g1"], data) as inner:  # indexes g1's files under another root
        inner.scan()
    with Library([root], data) as lib:
        lib.scan()
        for path in sorted((root / "g0").glob("*.safetensors")):
            path.unlink()
        lib.scan()
        make_library(root, 9, prefix="new")
        report = lib.scan()
        assert report.read == 9 and report.errors == 0 and not report.problems
        names = sorted(e.name for e in lib.all())
        assert names == sorted([f"old{i:03d}" for i in range(6) if i % 3] + [f"new{i:03d}" for i in range(9)])
        assert [e.name for e in lib.search("newalias004").items] == ["new004"]
        assert [e.name for e in lib.search("oldalias004").items] == ["old004"]
    with Library([root / "g1"], data) as inner:  # its rows moved to the outer root, still one per path
        assert len(inner) == 0


def test_failed_bulk_scan_puts_the_indexes_back(tmp_path, bulk_threshold, monkeypatch):
    root = tmp_path / "loras"
    make_library(root, 8)
    data = tmp_path / "data"
    with Library([root], data):
        pass
    wanted = index_names(data / "library.sqlite3")
    calls = []

    def full(conn, records):
        calls.append(len(records))
        if len(calls) == 2:
            raise sqlite3.OperationalError("database or disk is full")
        return real_upsert(conn, records)

    real_upsert = IndexDB.upsert_files
    monkeypatch.setattr(IndexDB, "upsert_files", staticmethod(full))
    with Library([root], data) as lib:
        report = lib.scan()
        assert any("disk full" in p for p in report.problems)
        assert index_names(data / "library.sqlite3") == wanted
    monkeypatch.undo()
    with Library([root], data) as lib:  # the next scan reads what the failed one did not store
        report = lib.scan()
        assert len(lib) == 8 and not report.problems


def test_end_bulk_failure_is_reported_and_the_next_open_restores_indexes(tmp_path, bulk_threshold, monkeypatch):
    root = tmp_path / "loras"
    make_library(root, 6)
    data = tmp_path / "data"

    def broken(self, statements):
        raise StorageError("the library index could not be written: disk full (test)")

    monkeypatch.setattr(IndexDB, "end_bulk", broken)
    with Library([root], data) as lib:
        report = lib.scan()
        assert any("disk full" in p for p in report.problems)
        assert len(lib) == 6 and [e.name for e in lib.search("alias003").items] == ["f003"]
    monkeypatch.undo()
    with Library([root], data) as lib:
        assert len(index_names(data / "library.sqlite3")) > 10
        assert lib.find("f003").alias == "falias003"


def test_alias_inside_the_name_is_searchable_but_not_indexed_twice(tmp_path):
    root = tmp_path / "loras"
    write_lora(root / "Ink_Style_v2.safetensors", metadata=kohya_metadata("Ink_Style"))
    with Library([root], tmp_path / "data") as lib:
        lib.scan()
        assert [e.name for e in lib.search("ink_style").items] == ["Ink_Style_v2"]
        assert lib.find("Ink_Style").name == "Ink_Style_v2"
        text = lib.db.query("SELECT search_text FROM details")[0][0]
        assert text.split("\n").count("Ink_Style") == 0 and "1girl" in text


def test_layouts_that_differ_in_rank_share_the_family_work(monkeypatch):
    calls = []
    real = inspect_header.family_from_header_or_names
    monkeypatch.setattr(inspect_header, "family_from_header_or_names", lambda h, m=None: calls.append(1) or real(h, m))
    k, te = MODULES[0], MODULES[6]

    def header(rank, width=768):
        return {f"{k}.lora_down.weight": {"shape": [rank, width]}, f"{k}.lora_up.weight": {"shape": [320, rank]},
                f"{k}.alpha": {"shape": []}, f"{te}.lora_down.weight": {"shape": [rank, 768]},
                f"{te}.lora_up.weight": {"shape": [768, rank]}}

    summarizer = Summarizer()
    for rank in (4, 8, 16, 32):
        summary = summarizer.summarize(header(rank), {})
        assert (summary["family"], summary["network_dim"]) == ("sd1", rank)
    assert len(calls) == 1
    # another input width is other evidence: worked out again
    assert summarizer.summarize(header(8, 2048), {})["family"] == "sdxl" and len(calls) == 2


def _bulk_scan_in_process(root, data_dir, queue):
    try:
        indexer_module.BULK_MIN_ROWS, indexer_module.BULK_WRITE_BATCH = 10, 7
        with Library([root], data_dir) as lib:
            report = lib.scan()
            queue.put((len(lib), report.problems))
    except Exception as exc:  # reported to the parent
        queue.put(repr(exc))


def test_two_processes_bulk_loading_one_index(tmp_path):
    import multiprocessing
    root = tmp_path / "shared"
    make_library(root, 60)
    data = tmp_path / "data"
    with Library([root], tmp_path / "reference"):
        wanted = index_names(tmp_path / "reference" / "library.sqlite3")
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_bulk_scan_in_process, args=(root, data, queue)) for _ in range(2)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert results == [(60, []), (60, [])]
    assert index_names(data / "library.sqlite3") == wanted
    with Library([root], data) as lib:
        assert lib.scan().read == 0 and len(lib) == 60
        assert [e.name for e in lib.search("falias017").items] == ["f017"]
        conn = sqlite3.connect(data / "library.sqlite3")
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert conn.execute("SELECT COUNT(*) FROM files_fts").fetchone()[0] == 60
        conn.close()
