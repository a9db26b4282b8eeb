"""Library benchmark: index, warm start, rescan, search, pages and memory at 1k / 10k / 50k LoRA files.

    python bench/library.py                       # N = 1000, 10000, 50000
    python bench/library.py --sizes 1000 --write-doc

Files are small but real safetensors LoRAs: kohya key names (SD1 or SDXL layout, ~170 tensors
so headers have a realistic size), tiny tensors except the cross-attention/text-encoder inputs that
carry the family's real widths, and kohya metadata with ss_tag_frequency. 10% have an A1111
`.json` sidecar, 5% a preview. Generated once per N under --cache-dir and reused.
Each N runs in its own process so RSS numbers do not mix.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import random
import resource
import shutil
import statistics
import struct
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

WORDS = ("ink wash neon cyber pastel gothic retro anime photo sketch watercolor oil charcoal pixel chibi "
         "samurai knight witch robot dragon forest ocean city desert winter autumn cherry blossom lantern "
         "portrait armor dress kimono hoodie glasses smile tears rain sunset studio cinematic glow").split()
TAGS = ("1girl 1boy solo smile long_hair short_hair blue_eyes red_eyes looking_at_viewer outdoors indoors "
        "simple_background white_background upper_body full_body dress school_uniform hat jewelry flower "
        "sky cloud night day holding weapon sword standing sitting open_mouth blush").split()


def _lora_tensors(family: str) -> tuple[dict, bytes]:
    """(header tensor entries, data bytes) shared by every generated file of a family."""
    entries, chunks, offset = {}, [], 0

    def add(name, shape):
        nonlocal offset
        n = 2
        for d in shape:
            n *= d
        entries[name] = {"dtype": "F16", "shape": list(shape), "data_offsets": [offset, offset + n]}
        chunks.append(b"\0" * n)
        offset += n

    ctx, te_dim = (2048, 1280) if family == "sdxl" else (768, 768)
    blocks = [("down_blocks", b, a) for b in range(3) for a in range(2)] + [("up_blocks", b, a) for b in range(1, 4) for a in range(3)]
    for kind, b, a in blocks:
        base = f"lora_unet_{kind}_{b}_attentions_{a}_transformer_blocks_0"
        for proj in ("attn1_to_q", "attn1_to_k", "attn1_to_v", "attn2_to_k", "attn2_to_v"):
            in_dim = ctx if proj.startswith("attn2") else 4
            add(f"{base}_{proj}.lora_down.weight", (1, in_dim))
            add(f"{base}_{proj}.lora_up.weight", (4, 1))
            add(f"{base}_{proj}.alpha", ())
    prefix = "lora_te2_" if family == "sdxl" else "lora_te_"
    for layer in range(2):
        add(f"{prefix}text_model_encoder_layers_{layer}_self_attn_q_proj.lora_down.weight", (1, te_dim))
        add(f"{prefix}text_model_encoder_layers_{layer}_self_attn_q_proj.lora_up.weight", (4, 1))
        add(f"{prefix}text_model_encoder_layers_{layer}_self_attn_q_proj.alpha", ())
    return entries, b"".join(chunks)


def _metadata(rng: random.Random, name: str, family: str) -> dict:
    tags = {t: rng.randint(1, 80) for t in rng.sample(TAGS, 12)}
    tags[name.split("_")[0]] = 100
    return {
        "ss_output_name": name,
        "ss_base_model_version": "sdxl_base_v1-0" if family == "sdxl" else "sd_v1",
        "ss_network_module": "networks.lora", "ss_network_dim": "16", "ss_network_alpha": "8",
        "ss_tag_frequency": json.dumps({f"10_{name}": tags}),
        "ss_dataset_dirs": json.dumps({f"10_{name}": {"n_repeats": 10, "img_count": rng.randint(10, 200)}}),
        "ss_resolution": "(1024, 1024)" if family == "sdxl" else "(512, 512)",
        "ss_num_train_images": str(rng.randint(100, 2000)),
        "ss_training_started_at": str(1.7e9 + rng.randint(0, 10**7)),
        "ss_learning_rate": "0.0001", "ss_optimizer": "AdamW8bit", "ss_num_epochs": "10",
        "ss_sd_model_name": "model.safetensors", "sshs_model_hash": "%064x" % rng.getrandbits(256),
    }


def write_safetensors(path: str, entries: dict, data: bytes, metadata: dict) -> None:
    header = dict(entries)
    header["__metadata__"] = metadata
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(raw)) + raw + data)


def generate(root: str, n: int, seed: int = 0) -> None:
    marker = os.path.join(root, ".complete")
    if os.path.exists(marker):
        return
    shutil.rmtree(root, ignore_errors=True)
    rng = random.Random(seed)
    templates = {f: _lora_tensors(f) for f in ("sd1", "sdxl")}
    start = time.perf_counter()
    for i in range(n):
        family = "sdxl" if i % 3 == 0 else "sd1"
        folder = os.path.join(root, f"group{i % 20:02d}", f"set{(i // 20) % 25:02d}")
        os.makedirs(folder, exist_ok=True)
        name = f"{rng.choice(WORDS)}_{rng.choice(WORDS)}_{i:06d}"
        path = os.path.join(folder, name + ".safetensors")
        entries, data = templates[family]
        write_safetensors(path, entries, data, _metadata(rng, name, family))
        if i % 10 == 0:
            with open(os.path.join(folder, name + ".json"), "w") as fh:
                json.dump({"activation text": f"{rng.choice(WORDS)} style trigger{i}"}, fh)
        if i % 20 == 1:
            with open(os.path.join(folder, name + ".preview.png"), "wb") as fh:
                fh.write(b"\x89PNG\r\n\x1a\n")
    open(marker, "w").close()
    print(f"  generated {n} files in {time.perf_counter() - start:.1f}s", file=sys.stderr)


def rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def bench_one(n: int, cache_dir: str) -> dict:
    from lora_core.library import Library
    from lora_core.formats.header import read_header

    root = os.path.join(cache_dir, f"loras_{n}")
    generate(root, n)
    data_dir = os.path.join(cache_dir, f"data_{n}")
    shutil.rmtree(data_dir, ignore_errors=True)
    result = {"n": n, "rss_start_mb": rss_mb()}

    def header_reads() -> tuple[float, float]:
        """Every header read and checked (what a cold index cannot avoid): wall and CPU seconds."""
        start, cpu = time.perf_counter(), time.process_time()
        for folder, _dirs, files in os.walk(root):
            for f in files:
                if f.endswith(".safetensors"):
                    read_header(os.path.join(folder, f))
        return time.perf_counter() - start, time.process_time() - cpu

    # The floor for a cold index, in the same process: an untimed pass first (the files may have
    # left the page cache since they were generated), then one timed pass before and one after
    # the cold index; the floor is their mean (a shared machine's load drifts during a run).
    header_reads()
    before = header_reads()
    start, cpu = time.perf_counter(), time.process_time()
    lib = Library([root], data_dir)
    report = lib.scan()
    result["cold_index_s"] = time.perf_counter() - start
    result["cold_index_cpu_s"] = time.process_time() - cpu
    assert report.total == n and report.read == n and report.errors == 0, report
    result["rss_after_cold_mb"] = rss_mb()
    lib.close()
    after = header_reads()
    result["header_reads_passes"] = [before, after]
    result["header_reads_s"] = (before[0] + after[0]) / 2
    result["header_reads_cpu_s"] = (before[1] + after[1]) / 2

    # warm start as a host does it at start-up: open, first page, quick scan (unchanged folders
    # are not listed); then the same with a full scan (stats every file)
    start, cpu = time.perf_counter(), time.process_time()
    lib = Library([root], data_dir)
    first = lib.search("", 0, 50)
    result["open_first_page_s"] = time.perf_counter() - start
    report = lib.scan(quick=True)
    result["warm_quick_s"] = time.perf_counter() - start
    result["warm_quick_cpu_s"] = time.process_time() - cpu
    assert report.read == 0 and report.total == n and first.total == n, report
    lib.close()
    start, cpu = time.perf_counter(), time.process_time()
    lib = Library([root], data_dir)
    first = lib.search("", 0, 50)
    report = lib.scan()
    result["warm_start_s"] = time.perf_counter() - start
    result["warm_start_cpu_s"] = time.process_time() - cpu
    assert report.read == 0 and first.total == n, report

    rng = random.Random(1)
    changed = rng.sample(sorted(e.path for e in lib.search("", 0, 1000).items), max(1, n // 100)) if n <= 1000 else None
    if changed is None:  # pick 1% across the whole tree
        all_paths = [os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs if f.endswith(".safetensors")]
        changed = rng.sample(all_paths, n // 100)
    later = time.time_ns() + 10**9
    for path in changed:  # same bytes, new mtime: the scan must re-read exactly these
        os.utime(path, ns=(later, later))
    start = time.perf_counter()
    report = lib.scan()
    result["rescan_1pct_s"] = time.perf_counter() - start
    result["rescan_read"] = report.read
    # the first searches after that change (cached orders and results are stale now)
    first_after_change = {}
    for query, sort, filters in FIRST_VIEWS:
        t = time.perf_counter()
        lib.search(query, 0, 50, sort=sort, **filters)
        first_after_change[view_label(query, sort, filters)] = (time.perf_counter() - t) * 1000

    times = []
    for _ in range(5):
        for query, sort in QUERIES:
            t = time.perf_counter()
            lib.search(query, 0, 50, sort=sort)
            times.append((time.perf_counter() - t) * 1000)
    result["search_median_ms"] = statistics.median(times)
    result["search_p95_ms"] = sorted(times)[int(len(times) * 0.95) - 1]
    result["search_max_ms"] = max(times)
    result["first_after_change_ms"] = first_after_change
    t = time.perf_counter()
    lib.search("", page=(n // 50) - 1, page_size=50)
    result["last_page_ms"] = (time.perf_counter() - t) * 1000
    t = time.perf_counter()
    lib.search("", 0, 50, family="sdxl", folder="group03")
    result["filtered_ms"] = (time.perf_counter() - t) * 1000
    t = time.perf_counter()
    lib.find(os.path.splitext(os.path.basename(changed[0]))[0])
    result["find_ms"] = (time.perf_counter() - t) * 1000
    # a few files used (the last-used order then differs from the name order)
    for i, path in enumerate(changed[: max(1, n // 100)]):
        lib.mark_used([path], when=1.7e9 + i)
    result["pages"] = page_latency(lib, random.Random(2))
    lib.close()
    result["first_after_open"] = first_after_open(root, data_dir)
    result["rss_end_mb"] = rss_mb()
    result["max_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result["index_mb"] = os.path.getsize(os.path.join(data_dir, "library.sqlite3")) / 1e6
    result["load"] = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    return result


QUERIES = [("", "name"), ("", "date"), ("", "size"), ("ink", "name"), ("dragon", "date"), ("smile", "name"),
           ("long_hair", "name"), ("trigger123", "name"), ("ci", "name"), ("knight samurai", "name"),
           ("group03/set07", "name"), ("zzzz-nothing", "name")]


# (query, sort, filters) whose pages are timed: every sort, with and without words and filters
PAGE_VIEWS = [("", "name", {}), ("", "date", {}), ("", "size", {}), ("", "last_used", {}),
              ("smile", "name", {}), ("smile", "date", {}), ("ink", "size", {}), ("long_hair", "last_used", {}),
              ("ci", "name", {}), ("knight samurai", "date", {}), ("", "name", {"family": "sdxl"}),
              ("", "size", {"folder": "group03"}), ("smile", "date", {"family": "sd1", "folder": "group07"})]
FIRST_VIEWS = [("", "name", {}), ("", "date", {}), ("smile", "name", {}), ("ink", "size", {}),
               ("", "last_used", {}), ("", "name", {"family": "sdxl"})]


def view_label(query, sort, filters) -> str:
    extra = "".join(f", {k}={v}" for k, v in filters.items())
    return f"{query or '(all)'} / {sort}{extra}"


def page_latency(lib, rng, page_size: int = 50) -> dict:
    """Per view: the first page (first call), then page 1, the middle, the last and 10 random
    pages (p50 / p95 / max over those), and the last page alone."""
    out = {}
    for query, sort, filters in PAGE_VIEWS:
        t = time.perf_counter()
        first = lib.search(query, 0, page_size, sort=sort, **filters)
        first_ms = (time.perf_counter() - t) * 1000
        last = max(0, (first.total - 1) // page_size)
        pages = [1, last // 2, last] + [rng.randint(0, last) for _ in range(10)]
        times, last_ms = [], None
        for page in pages:
            t = time.perf_counter()
            got = lib.search(query, page, page_size, sort=sort, **filters)
            times.append((time.perf_counter() - t) * 1000)
            if page == last:
                last_ms = times[-1]
                assert got.items or first.total == 0
        times.sort()
        out[view_label(query, sort, filters)] = {
            "total": first.total, "pages": last + 1, "first_ms": first_ms, "p50_ms": statistics.median(times),
            "p95_ms": times[int(round(0.95 * (len(times) - 1)))], "max_ms": times[-1], "last_ms": last_ms}
    return out


def first_after_open(root: str, data_dir: str) -> dict:
    """The first search of a newly opened Library (page 0 and the last page), per view."""
    from lora_core.library import Library

    out = {}
    for query, sort, filters in FIRST_VIEWS:
        with Library([root], data_dir) as lib:
            t = time.perf_counter()
            first = lib.search(query, 0, 50, sort=sort, **filters)
            first_ms = (time.perf_counter() - t) * 1000
        with Library([root], data_dir) as lib:
            t = time.perf_counter()
            lib.search(query, max(0, (first.total - 1) // 50), 50, sort=sort, **filters)
            deep_ms = (time.perf_counter() - t) * 1000
        out[view_label(query, sort, filters)] = {"page0_ms": first_ms, "last_page_ms": deep_ms}
    return out


def bench_repeat(n: int, cache_dir: str, repeats: int = 5) -> dict:
    """Warm start and per-query search latency repeated on an existing index (best and median),
    to separate the code's cost from waiting for a core on a busy machine."""
    from lora_core.library import Library

    root, data_dir = os.path.join(cache_dir, f"loras_{n}"), os.path.join(cache_dir, f"data_{n}")
    if not os.path.exists(os.path.join(data_dir, "library.sqlite3")):
        raise SystemExit(f"no index for N={n}: run the full benchmark first")
    warm, quick = [], []
    for _ in range(repeats):
        for scan_quick, times in ((True, quick), (False, warm)):
            start = time.perf_counter()
            with Library([root], data_dir) as lib:
                lib.search("", 0, 50)
                report = lib.scan(quick=scan_quick)
                assert report.read == 0
            times.append(time.perf_counter() - start)
    per_query = {}
    with Library([root], data_dir) as lib:
        for query, sort in QUERIES:
            times = []
            for _ in range(repeats + 2):
                t = time.perf_counter()
                lib.search(query, 0, 50, sort=sort)
                times.append((time.perf_counter() - t) * 1000)
            per_query[f"{query or '(all)'} / {sort}"] = {"first": times[0], "best": min(times[1:]),
                                                         "median": statistics.median(times[1:])}
    return {"n": n, "warm_best_s": min(warm), "warm_median_s": statistics.median(warm), "quick_best_s": min(quick),
            "quick_median_s": statistics.median(quick), "queries": per_query, "load": os.getloadavg()[0]}


def _ms(x) -> str:
    return "–" if x is None else f"{x:.1f}"


def render(results: list[dict], command: str, repeat: dict | None = None, note: str | None = None) -> str:
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    load = results[-1].get("load") if results else None
    lines = [
        "## Library", "",
        f"Command: `{command}`  ",
        f"Date: {date}; machine: {platform.machine()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}, "
        f"SQLite {__import__('sqlite3').sqlite_version}; files on local disk, OS page cache warm (generated "
        "before the run)" + (f"; load average {load} (1/5/15 min) at the end of the largest size" if load else "")
        + (f"; {note}" if note else "") + ".",
        "",
        "Goals: warm start < 1 s and search < 50 ms at 50,000 files (every page, every sort); cold index "
        "limited by reading the headers (column cold / reads: wall, CPU in brackets; the rest is summaries, "
        "sidecars and SQLite; it was 4.0× at 50,000 before the bulk-index work of 2026-11-26).", "",
        "Header reads only: `read_header` (read + JSON parse + checks of every tensor entry) of every file, "
        "the mean of one pass just before and one just after the cold index, after an untimed pass that "
        "loads the page cache. Cold index: new `Library`, `scan()` into an empty index (header reads, "
        "summaries, sidecars, SQLite rows, full-text index, sort orders). The generated files come in two "
        "tensor layouts (SD1, SDXL), so the scan's per-layout memo works out algorithm and family twice; "
        "a file whose layout the scan has not seen costs about 0.1 ms more when only its rank differs from "
        "one it has seen, and about 1.7 ms more (for ~230 keys) when its key names are new too.", "",
        "Times are wall clock (CPU time of the process in brackets where it matters: the machine is shared, so "
        "wall time includes waiting for a core).", "",
        "| files | header reads only | cold index | cold / reads | warm start, quick scan | warm start, full scan | open + first page | rescan 1% changed (full) | search median / p95 / max | filtered | find | RSS after cold / max | index size |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r['n']:,} | {r['header_reads_s']:.2f} s ({r['header_reads_cpu_s']:.2f}) "
            f"| {r['cold_index_s']:.2f} s ({r['cold_index_cpu_s']:.2f}) "
            f"| {r['cold_index_s'] / r['header_reads_s']:.2f}× ({r['cold_index_cpu_s'] / r['header_reads_cpu_s']:.2f}×) "
            f"| {r['warm_quick_s']:.3f} s ({r['warm_quick_cpu_s']:.3f}) | {r['warm_start_s']:.3f} s ({r['warm_start_cpu_s']:.3f}) "
            f"| {r['open_first_page_s'] * 1000:.1f} ms | {r['rescan_1pct_s']:.3f} s ({r['rescan_read']} read) "
            f"| {r['search_median_ms']:.1f} / {r['search_p95_ms']:.1f} / {r['search_max_ms']:.1f} ms "
            f"| {r['filtered_ms']:.1f} ms | {r['find_ms']:.2f} ms "
            f"| {r['rss_after_cold_mb']:.0f} / {r['max_rss_mb']:.0f} MB | {r['index_mb']:.1f} MB |"
        )
    lines += ["",
              "Search queries (page 0, 50 per page, 5 rounds): empty query sorted by name/date/size, single words "
              "matching a name, a training tag or an activation text, a 2-letter substring, two words, a folder "
              "path, and a miss. Warm start = new `Library` object, first page, rescan that finds nothing to read: "
              "quick (`scan(quick=True)`, what a host should run at start-up: folders whose signature is unchanged "
              "are not listed) and full (`scan()`: stats every file). Each size runs in a fresh process.", "",
              "Quick scan trade-off: a folder is listed again only when its own signature (mtime, ctime, inode) "
              "changed, which adding, removing or renaming a file or sidecar (or replacing one atomically) does; "
              "a file or sidecar rewritten in place keeps its folder's signature and is picked up by the next full "
              "scan. A folder that changed less than 2 s before it was listed is listed again next time (mtime "
              "granularity), and a library with symbolic links always gets a full scan. Search: every (query, "
              "sort, filters) result is an id list in sort order, computed once per index version and sliced per "
              "page; the unfiltered order of each sort is stored in the index (refreshed by scans that change "
              "something), so a new process pages without sorting; a filtered order is that order minus the ids "
              "the filters drop.", ""]
    big = results[-1] if results else None
    if big and big.get("pages"):
        lines += [f"Pages at {big['n']:,} files (50 per page): per view the first call, then page 1, the middle, "
                  "the last and 10 random pages (p50 / p95 / max over those 13 calls), and the last page.", "",
                  "| query / sort / filters | matches | pages | first | p50 | p95 | max | last page |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for name, v in big["pages"].items():
            lines.append(f"| `{name}` | {v['total']:,} | {v['pages']:,} | {_ms(v['first_ms'])} ms | {_ms(v['p50_ms'])} ms "
                         f"| {_ms(v['p95_ms'])} ms | {_ms(v['max_ms'])} ms | {_ms(v['last_ms'])} ms |")
        lines += ["", "First search of a newly opened `Library` (each in its own new object: page 0, or the last page "
                  "straight away), and the first search after the 1% rescan changed the index:", "",
                  "| query / sort / filters | after open: page 0 | after open: last page | after a change: page 0 |",
                  "|---|---:|---:|---:|"]
        for name, v in big["first_after_open"].items():
            lines.append(f"| `{name}` | {_ms(v['page0_ms'])} ms | {_ms(v['last_page_ms'])} ms "
                         f"| {_ms(big['first_after_change_ms'].get(name))} ms |")
        lines.append("")
    if repeat:
        lines += [
            f"Repeated on the {repeat['n']:,}-file index (`python bench/library.py --repeat {repeat['n']}`, load "
            f"average {repeat['load']:.1f}): warm start with a quick scan best {repeat['quick_best_s']:.3f} s, median "
            f"{repeat['quick_median_s']:.3f} s; with a full scan best {repeat['warm_best_s']:.3f} s, median "
            f"{repeat['warm_median_s']:.3f} s. Search per query: the first call and the best / median of the "
            "following calls.", "",
            "| query / sort | first | best | median |", "|---|---:|---:|---:|",
        ]
        for name, q in repeat["queries"].items():
            lines.append(f"| `{name}` | {q['first']:.1f} ms | {q['best']:.1f} ms | {q['median']:.1f} ms |")
        lines.append("")
    return "\n".join(lines)


def write_doc(section: str) -> None:
    """Insert or replace the "## Library" section of docs/BENCHMARKS.md, keeping other sections."""
    path = os.path.join(REPO, "docs", "BENCHMARKS.md")
    text = open(path, encoding="utf-8").read() if os.path.exists(path) else "# Benchmarks\n"
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip() == "## Library"), None)
    if start is None:
        text = text.rstrip("\n") + "\n\n" + section
    else:
        # ends at the next section or at another tool's marker comment (kept)
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith(("## ", "<!--"))), len(lines))
        text = "\n".join(lines[:start] + section.rstrip("\n").splitlines() + [""] + lines[end:]).rstrip("\n") + "\n"
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(text if text.endswith("\n") else text + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000,50000")
    parser.add_argument("--cache-dir", default=os.path.join("/tmp", "lora_core_bench_library"))
    parser.add_argument("--write-doc", action="store_true", help="update the Library section of docs/BENCHMARKS.md")
    parser.add_argument("--repeat", type=int, metavar="N",
                        help="only repeat warm start and search on the existing N-file index (after a full run)")
    parser.add_argument("--note", help="load conditions to state in the document (kept by --repeat)")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(bench_one(args.one, args.cache_dir)))
        return 0
    saved = os.path.join(args.cache_dir, "results.json")
    if args.repeat:
        with open(saved) as fh:
            previous = json.load(fh)
        repeat = bench_repeat(args.repeat, args.cache_dir)
        print(json.dumps(repeat, indent=1), file=sys.stderr)
        section = render(previous["results"], previous["command"], repeat, args.note or previous.get("note"))
        print(section)
        if args.write_doc:
            write_doc(section)
        return 0
    results = []
    for n in [int(s) for s in args.sizes.split(",")]:
        print(f"N = {n} ...", file=sys.stderr)
        out = subprocess.run([sys.executable, __file__, "--one", str(n), "--cache-dir", args.cache_dir],
                             check=True, capture_output=True, text=True)
        sys.stderr.write(out.stderr)
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(json.dumps(results[-1], indent=1), file=sys.stderr)
    command = "python bench/library.py" + ("" if args.sizes == "1000,10000,50000" else f" --sizes {args.sizes}")
    with open(saved, "w") as fh:
        json.dump({"results": results, "command": command, "note": args.note}, fh)
    section = render(results, command, note=args.note)
    print(section)
    if args.write_doc:
        write_doc(section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
