"""`python -m lora_core list`: scan the LoRA folders and list the library (text table or JSON)."""
from __future__ import annotations

import json
import logging
import sys

logger = logging.getLogger(__name__)


def add_arguments(parser) -> None:
    from lora_core.library.locations import add_data_dir_argument, add_location_arguments

    add_location_arguments(parser, lora_aliases=("--dir",))  # --dir: the old spelling of --lora-dir
    add_data_dir_argument(parser)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--query", default="", help="only entries matching these words")
    parser.add_argument("--family", default=None, help="only this base family (sd1, sd2, sdxl, ...)")
    parser.add_argument("--sort", default="name", choices=["name", "date", "size", "last_used"])
    parser.add_argument("--limit", type=int, default=None,
                        help="at most this many entries (default: all; read page by page, never capped)")
    parser.add_argument("--hashes", action="store_true", help="compute missing hashes before listing")


def run(args) -> int:
    from lora_core.library import Library

    from lora_core.library.locations import lora_dirs

    dirs = lora_dirs(args)
    with Library(dirs, args.data_dir) as lib:
        bar = None
        try:
            from tqdm import tqdm

            def progress(done, total, path):
                nonlocal bar
                if bar is None:
                    bar = tqdm(total=total, desc="indexing", unit="file", file=sys.stderr, leave=False)
                bar.update(1)
        except ImportError:  # tqdm is optional here
            progress = None
        report = lib.scan(progress=progress)
        if bar is not None:
            bar.close()
        for problem in lib.problems + report.problems:
            logger.warning("%s", problem)
        if args.hashes:
            lib.request_hashes()
            lib.wait_for_hashes()
        total = lib.search(args.query, 0, 1, sort=args.sort, family=args.family).total
        shown = total if args.limit is None else max(0, min(args.limit, total))
        entries = _entries(lib, args, shown)
        if args.json:
            # streamed: one entry at a time, so a 100,000-file library needs no whole-list copy
            out = sys.stdout
            scan = {"files": report.total, "read": report.read, "removed": report.removed, "errors": report.errors}
            out.write("{\n")
            out.write(f'  "dirs": {json.dumps(dirs, ensure_ascii=False)},\n')
            out.write(f'  "total": {total},\n')
            out.write(f'  "shown": {shown},\n')
            out.write(f'  "scan": {json.dumps(scan)},\n')
            out.write('  "entries": [')
            for i, e in enumerate(entries):
                text = json.dumps(e.to_dict(), indent=2, ensure_ascii=False, default=str)
                out.write(("," if i else "") + "\n    " + text.replace("\n", "\n    "))
            out.write("\n  ]\n}\n" if shown else "]\n}\n")
            return 0
        rows = [(e.rel_name, e.family, e.algorithm, f"{e.size / 1e6:.1f}MB",
                 f"ERROR: {e.error}" if e.error else (e.alias or "")) for e in entries]
        width = max([len(r[0]) for r in rows] + [4])
        print(f"{'NAME':<{width}}  {'FAMILY':<7}  {'ALGO':<6}  {'SIZE':>9}  ALIAS / PROBLEM")
        for name, family, algo, size, extra in rows:
            print(f"{name:<{width}}  {family:<7}  {algo:<6}  {size:>9}  {extra}")
        more = f" (first {shown} shown)" if shown < total else ""
        print(f"{total} LoRA file(s) in {', '.join(dirs)}{more}")
    return 0


def _entries(lib, args, count: int):
    """The first `count` entries in order, fetched page by page (the library pages at most
    MAX_PAGE_SIZE entries per call)."""
    from lora_core.library.library import MAX_PAGE_SIZE

    page = 0
    while count > 0:
        result = lib.search(args.query, page, MAX_PAGE_SIZE, sort=args.sort, family=args.family)
        items = result.items[:count]
        yield from items
        count -= len(items)
        if len(result.items) < MAX_PAGE_SIZE:
            return
        page += 1
