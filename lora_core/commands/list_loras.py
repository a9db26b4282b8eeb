"""`python -m lora_core list`: scan the LoRA folders and list the library (text table or JSON)."""
from __future__ import annotations

import json
import logging
import sys

logger = logging.getLogger(__name__)


def add_arguments(parser) -> None:
    parser.add_argument("--dir", action="append", default=[], metavar="DIR",
                        help="LoRA folder (repeatable; default: models/Lora)")
    parser.add_argument("--data-dir", default=None, help="where the index lives (default: $LORA_CORE_DATA_DIR or ~/.cache/lora_core)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--query", default="", help="only entries matching these words")
    parser.add_argument("--family", default=None, help="only this base family (sd1, sd2, sdxl, ...)")
    parser.add_argument("--sort", default="name", choices=["name", "date", "size", "last_used"])
    parser.add_argument("--limit", type=int, default=1000, help="at most this many entries")
    parser.add_argument("--hashes", action="store_true", help="compute missing hashes before listing")


def run(args) -> int:
    from lora_core.library import Library

    dirs = args.dir or ["models/Lora"]
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
        page = lib.search(args.query, 0, max(1, min(args.limit, 1000)), sort=args.sort, family=args.family)
        if args.json:
            out = {
                "dirs": dirs,
                "total": page.total,
                "scan": {"files": report.total, "read": report.read, "removed": report.removed, "errors": report.errors},
                "entries": [e.to_dict() for e in page.items],
            }
            json.dump(out, sys.stdout, indent=2, ensure_ascii=False, default=str)
            sys.stdout.write("\n")
            return 0
        width = max([len(e.rel_name) for e in page.items] + [4])
        print(f"{'NAME':<{width}}  {'FAMILY':<7}  {'ALGO':<6}  {'SIZE':>9}  ALIAS / PROBLEM")
        for e in page.items:
            size = f"{e.size / 1e6:.1f}MB"
            extra = f"ERROR: {e.error}" if e.error else (e.alias or "")
            print(f"{e.rel_name:<{width}}  {e.family:<7}  {e.algorithm:<6}  {size:>9}  {extra}")
        print(f"{page.total} LoRA file(s) in {', '.join(dirs)}")
    return 0
