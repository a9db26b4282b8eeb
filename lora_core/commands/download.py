"""`python -m lora_core download URL [URL ...] [--folder F]`: LoRAs from Civitai or Hugging Face into the
LoRA folder, with a progress bar, the SHA256 checked, sidecars written and the index updated.

Exit status: 0 all files saved (or already there), 1 at least one failed, 2 nothing understood.
An interrupted download resumes where it stopped when the same command runs again.
"""
from __future__ import annotations

import logging
import sys
import time

logger = logging.getLogger(__name__)


def add_arguments(parser) -> None:
    from lora_core.library.locations import add_data_dir_argument, add_location_arguments

    add_location_arguments(parser)
    add_data_dir_argument(parser)
    parser.add_argument("urls", nargs="+", metavar="URL",
                        help="civitai.com/models/ID[?modelVersionId=V], a model-version link, an AIR "
                             "(urn:air:sdxl:lora:civitai:ID@V), a Civitai model id, or a huggingface.co file link")
    parser.add_argument("--folder", default="", help="sub-folder of the LoRA folder to save into")
    parser.add_argument("--civitai-url", default="https://civitai.com", help="Civitai base URL")
    parser.add_argument("--civitai-key", default=None, help="Civitai API key (default: $CIVITAI_API_KEY)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for each answer")


def run(args) -> int:
    from lora_core.library import Library
    from lora_core.library.downloads import DownloadQueue, DownloadSettings
    from lora_core.library.locations import lora_dirs

    dirs = lora_dirs(args)
    settings = DownloadSettings(lora_dir=dirs[0], civitai_base=args.civitai_url, civitai_key=args.civitai_key,
                                timeout=args.timeout, preview_level="PG13")
    with Library(dirs, args.data_dir) as lib:
        queue = DownloadQueue(lambda: lib, lambda: settings)
        jobs = []
        for url in args.urls:
            try:
                jobs.append(queue.enqueue(url, args.folder)["id"])
            except ValueError as exc:
                print(f"{url}: {exc}", file=sys.stderr)
        if not jobs:
            return 2
        failed = 0
        try:
            for job_id in jobs:
                final = _follow(queue, job_id)
                line = f"{final['file_name'] or final['text']}: {final['message']}"
                if final["state"] == "done":
                    print(line)
                else:
                    failed += 1
                    print(line, file=sys.stderr)
        except KeyboardInterrupt:
            for job_id in jobs:
                queue.pause(job_id)
            print("interrupted: run the same command again to resume", file=sys.stderr)
            return 130
        finally:
            queue.close()
        lib.wait_for_hashes(60)
        return 1 if failed else 0


def _follow(queue, job_id: int) -> dict:
    """Wait for one job with a tqdm bar of its bytes (tqdm is a runtime requirement)."""
    from tqdm import tqdm

    bar = None
    try:
        while True:
            job = queue.job(job_id)
            if job["total"] and bar is None:
                bar = tqdm(total=job["total"], unit="B", unit_scale=True, unit_divisor=1024,
                           desc=job["file_name"][:40] or "download", file=sys.stderr, leave=False)
            if bar is not None:
                if job["total"] and bar.total != job["total"]:
                    bar.total = job["total"]
                bar.update(max(0, job["done"] - bar.n))
            if job["state"] in ("done", "error", "cancelled", "paused"):
                return job
            time.sleep(0.2)
    finally:
        if bar is not None:
            bar.close()
