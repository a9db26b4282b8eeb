"""Download benchmark: our downloader against `curl` on the same loopback server, in the same run.

    python bench/download.py                          # 1 GB file, 3 rounds each, alternating
    python bench/download.py --size-mb 100 --rounds 2
    python bench/download.py --size-mb 1024 --library 50000   # + page requests while it downloads
    python bench/download.py --json out.json

A random file is written once under --cache-dir and served by a threaded HTTP server on
127.0.0.1 (os.sendfile, Range supported), the same server for both clients, in its own process
(in this one, its threads would share a GIL with our client but not with curl;
--server-in-process restores that old set-up for comparison). Each round runs
`curl -sS --fail -o /dev/null URL` (the server's raw throughput: no disk), `curl -sS --fail -o FILE URL`
and our `download_transfer.fetch` (what the queue runs: streaming,
SHA256 of every byte checked against the expected one, fsync, link into place), alternating so
a busy moment hurts both alike; throughput = size / wall time, best and median of the rounds.
The issue's target: ours within 5% of the server's raw throughput measured with curl (ratio >= 0.95);
both ratios are printed.

--library N: builds (once) the 50,000-file library of bench/library.py under --cache-dir, then
measures library page requests (`Library.search`, the call behind the tab's pages) idle and while a
download into that library runs, and the first page after the new file is indexed (p50/p95/max).
Not a timed test: run it on an idle machine (the coordinator does; see docs/BENCHMARKS.md).
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
MB = 1024 * 1024


def make_file(path: str, size_mb: int) -> str:
    """Random bytes (incompressible), written once; returns the SHA256 (cached next to it)."""
    sha_path = path + ".sha256"
    if os.path.exists(path) and os.path.getsize(path) == size_mb * MB and os.path.exists(sha_path):
        with open(sha_path) as fh:
            return fh.read().strip()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    h = hashlib.sha256()
    rng = random.Random(size_mb)
    # a valid safetensors file (one U8 tensor of random bytes), so the library indexes it cleanly
    header = b""
    for _ in range(2):  # the header's length depends on the data length it names
        n = size_mb * MB - 8 - len(header)
        header = json.dumps({"noise": {"dtype": "U8", "shape": [n], "data_offsets": [0, n]}}).encode()
        header += b" " * (-len(header) % 8)
    n = size_mb * MB - 8 - len(header)
    head = len(header).to_bytes(8, "little") + header
    with open(path, "wb") as fh:
        h.update(head)
        fh.write(head)
        left = n
        while left:
            block = rng.randbytes(min(MB, left))
            h.update(block)
            fh.write(block)
            left -= len(block)
    digest = h.hexdigest().upper()
    with open(sha_path, "w") as fh:
        fh.write(digest)
    return digest


def serve(path: str, sha: str) -> tuple[ThreadingHTTPServer, str]:
    """The file at /file.safetensors, and Civitai's model-version answer for it at
    /api/v1/model-versions/1 (so the queue can be handed "civitai:1@1" with this server as Civitai)."""
    size = os.path.getsize(path)
    holder = {}

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def do_GET(self):
            if self.path.startswith("/api/v1/model-versions/"):
                base = f"http://127.0.0.1:{holder['port']}"
                body = json.dumps({"id": 1, "modelId": 1, "name": "bench", "model": {"name": "bench", "type": "LORA"},
                                   "trainedWords": [], "images": [], "files": [{
                                       "name": "bench_download.safetensors", "type": "Model", "primary": True,
                                       "sizeKB": size / 1024, "hashes": {"SHA256": sha},
                                       "downloadUrl": f"{base}/file.safetensors"}]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
            start = 0
            rng = self.headers.get("Range")
            if rng and rng.startswith("bytes=") and rng[6:].split("-")[0].isdigit():
                start = int(rng[6:].split("-")[0])
            self.send_response(206 if start else 200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(size - start))
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("ETag", '"bench"')
            if start:
                self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
            self.end_headers()
            with open(path, "rb") as fh:
                offset = start
                try:
                    while offset < size:
                        sent = os.sendfile(self.wfile.fileno(), fh.fileno(), offset, min(64 * MB, size - offset))
                        if sent == 0:
                            break
                        offset += sent
                except OSError:
                    pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    holder["port"] = server.server_address[1]
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/file.safetensors"


class ServerProcess:
    """`serve()` in its own Python process, so the server's sendfile loop never waits for our
    client's GIL (curl runs in its own process; in-process, only our rounds would share a GIL
    with the server). Started with `--serve SRC SHA`, it prints its URL and serves until stdin closes."""

    def __init__(self, path: str, sha: str):
        self.proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--serve", path, sha],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.url = self.proc.stdout.readline().strip()
        if not self.url.startswith("http://127.0.0.1:"):
            self.close()
            raise RuntimeError(f"the bench server did not start (said {self.url!r})")

    def close(self) -> None:
        try:
            self.proc.stdin.close()  # the server's cue to exit
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def serve_until_stdin_closes(path: str, sha: str) -> int:
    server, url = serve(path, sha)
    print(url, flush=True)
    sys.stdin.read()
    server.shutdown()
    server.server_close()
    return 0


def run_curl(url: str, out: str) -> float:
    t = time.perf_counter()
    subprocess.run(["curl", "-sS", "--fail", "-o", out, url], check=True)
    return time.perf_counter() - t


def run_ours(url: str, out: str, sha: str) -> float:
    from lora_core.library.civitai_http import HttpClient, HttpSettings
    from lora_core.library.download_transfer import Control, fetch

    http = HttpClient(HttpSettings(timeout=60))
    control = Control()
    try:
        t = time.perf_counter()
        got = fetch(http, url, out, control, sha256=sha)
        seconds = time.perf_counter() - t
    finally:
        http.close()
    assert got == sha, "hash mismatch"
    FSYNC.append(control.stats.get("fsync_s", 0.0))
    DIRECT.append(bool(control.stats.get("direct_io")))
    return seconds


FSYNC: list[float] = []  # our fsync time per round (curl does not fsync)
DIRECT: list[bool] = []  # whether our writes went straight to the disk (O_DIRECT) that round


def remove(path: str) -> None:
    for p in (path, os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.part")):
        try:
            os.unlink(p)
        except FileNotFoundError:
            pass


def _busy_cpu_s() -> float | None:
    """CPU-seconds all CPUs spent busy since boot (Linux /proc/stat); None elsewhere."""
    try:
        with open("/proc/stat") as fh:
            ticks = [int(x) for x in fh.readline().split()[1:]]
        return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # minus idle, iowait
    except (OSError, ValueError, IndexError):
        return None


def _own_cpu_s(server_pid: int | None) -> float:
    """CPU-seconds of this process, its finished children (curl) and the server process."""
    t = os.times()
    total = t.user + t.system + t.children_user + t.children_system
    if server_pid:
        try:
            with open(f"/proc/{server_pid}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError):
            pass
    return total


def bench_throughput(url: str, sha: str, size: int, work: str, rounds: int, server_pid: int | None = None) -> dict:
    """Rounds alternate the order of curl -o /dev/null, curl -o FILE and ours. Per round also the CPU that other processes used meanwhile
    (all busy CPU minus ours, curl's and the server's): about 0 on an idle machine; other work on
    a 2-CPU machine slows our three threads more than curl's one."""
    times = {"curl_null": [], "curl": [], "ours": []}
    others = {"curl_null": [], "curl": [], "ours": []}
    out = os.path.join(work, "out.safetensors")
    for i in range(rounds):
        order = ("curl_null", "curl", "ours") if i % 2 == 0 else ("ours", "curl", "curl_null")
        for who in order:
            remove(out)
            busy, own = _busy_cpu_s(), _own_cpu_s(server_pid)
            if who == "ours":
                times[who].append(run_ours(url, out, sha))
            else:
                times[who].append(run_curl(url, out if who == "curl" else os.devnull))
            if busy is not None:
                others[who].append(max(0.0, (_busy_cpu_s() - busy) - (_own_cpu_s(server_pid) - own)))
            if who == "curl":
                with open(out, "rb") as fh:
                    assert hashlib.file_digest(fh, "sha256").hexdigest().upper() == sha, "curl got other bytes"
            remove(out)
    result = {}
    for who, ts in times.items():
        result[who] = {"best_s": min(ts), "median_s": statistics.median(ts), "runs_s": ts,
                       "best_mb_s": size / MB / min(ts), "median_mb_s": size / MB / statistics.median(ts)}
        result[who]["other_processes_cpu_s"] = others[who]
    result["ours"]["fsync_s"] = list(FSYNC)
    result["ours"]["direct_io"] = list(DIRECT)
    result["ratio_best"] = result["ours"]["best_mb_s"] / result["curl"]["best_mb_s"]
    result["ratio_median"] = result["ours"]["median_mb_s"] / result["curl"]["median_mb_s"]
    # against the server's raw throughput: curl receiving into /dev/null (no disk, no page cache)
    result["ratio_best_raw"] = result["ours"]["best_mb_s"] / result["curl_null"]["best_mb_s"]
    result["ratio_median_raw"] = result["ours"]["median_mb_s"] / result["curl_null"]["median_mb_s"]
    result["sha256_floor_s"] = sha256_floor_s(size)
    return result


def sha256_floor_s(size: int, repeats: int = 3) -> float:
    """The compute floor of a verified download: SHA256 of `size` bytes already in memory, on one
    core (best of `repeats`). A download that checks every byte cannot finish sooner than this
    when the network is faster than the hash."""
    buf = os.urandom(64 * MB)
    best = float("inf")
    for _ in range(repeats):
        h = hashlib.sha256()
        t = time.perf_counter()
        for _ in range(max(1, size // len(buf))):
            h.update(buf)
        best = min(best, time.perf_counter() - t)
    return best


def _pct(times: list[float]) -> dict:
    times = sorted(times)
    return {"n": len(times), "p50_ms": statistics.median(times), "p95_ms": times[int(round(0.95 * (len(times) - 1)))],
            "max_ms": times[-1]}


def bench_pages_during_download(n: int, url: str, cache_dir: str) -> dict:
    """Page requests (Library.search, as the tab's routes call it) idle, during a download into
    the same library, and the first one after the new file entered the index."""
    spec = importlib.util.spec_from_file_location("bench_library", os.path.join(REPO, "bench", "library.py"))
    bench_library = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench_library)
    from lora_core.library import Library
    from lora_core.library.downloads import DownloadQueue, DownloadSettings

    root = os.path.join(cache_dir, f"loras_{n}")
    bench_library.generate(root, n)
    data_dir = os.path.join(cache_dir, f"data_dl_{n}")
    rng = random.Random(1)
    views = [("", "name"), ("", "date"), ("anime", "name"), ("style", "size")]

    def one_page(lib) -> float:
        query, sort = rng.choice(views)
        t = time.perf_counter()
        total = lib.search(query, 0, 50, sort=sort).total
        page = rng.randint(0, max(0, (total - 1) // 50))
        lib.search(query, page, 50, sort=sort)
        return (time.perf_counter() - t) * 1000 / 2

    with Library([root], data_dir) as lib:
        lib.scan()
        for _ in range(20):  # warm the caches, as a running tab has them
            one_page(lib)
        idle = [one_page(lib) for _ in range(200)]
        target = os.path.join(root, "bench_download.safetensors")
        remove(target)
        civitai = url.rsplit("/", 1)[0]  # the bench server answers Civitai's model-version route
        queue = DownloadQueue(lambda: lib, lambda: DownloadSettings(lora_dir=root, civitai_base=civitai, timeout=60))
        try:
            job = queue.enqueue("civitai:1@1")
            during = []
            while queue.job(job["id"])["state"] in ("queued", "resolving"):
                time.sleep(0.01)
            while queue.job(job["id"])["state"] in ("downloading", "verifying"):
                during.append(one_page(lib))
            final = queue.wait(job["id"], 600)
        finally:
            queue.close()
        assert final["state"] == "done", final
        after = [one_page(lib)]  # the first page once the index changed (caches recomputed)
        after += [one_page(lib) for _ in range(50)]
        found = lib.search("bench_download", 0, 50).total
        for name in os.listdir(root):  # the file and its sidecars: the library stays as generated
            if name.startswith("bench_download."):
                os.unlink(os.path.join(root, name))
        lib.scan()
    return {"files": n, "idle": _pct(idle), "during_download": _pct(during), "first_after_ms": after[0],
            "after": _pct(after[1:]), "new_file_found_by_search": found}


def render(result: dict, command: str) -> str:
    t = result["throughput"]
    lines = [
        f"Command: `{command}`; {result['size_mb']} MB file on a loopback server (os.sendfile, "
        f"{result.get('server', 'own process')}), "
        f"{result['rounds']} rounds alternating; {result['machine']}.",
        "",
        "| client | best | median | best MB/s | median MB/s |",
        "|---|---|---|---|---|",
    ]
    for who, label in (("curl_null", "curl -o /dev/null (the server's raw throughput)"), ("curl", "curl -o FILE"),
                       ("ours", "lora_core (stream + SHA256 + fsync + link)")):
        r = t.get(who)
        if r is None:
            continue
        lines.append(f"| {label} | {r['best_s']:.2f} s | {r['median_s']:.2f} s | {r['best_mb_s']:.0f} | "
                     f"{r['median_mb_s']:.0f} |")
    fsync = t["ours"].get("fsync_s") or [0.0]
    raw = (f"; ours/raw (curl -o /dev/null): best {t['ratio_best_raw']:.3f}, median {t['ratio_median_raw']:.3f}"
           if "ratio_best_raw" in t else "")
    lines += ["", f"Ratio ours/curl -o FILE: best {t['ratio_best']:.3f}, median {t['ratio_median']:.3f}{raw} "
                  f"(target >= 0.95). Of our time, fsync before the rename (curl does none): "
                  f"median {statistics.median(fsync):.2f} s. Our writes: "
                  f"{'O_DIRECT' if all(t['ours'].get('direct_io') or [False]) else 'buffered (page cache)'}."]
    if "sha256_floor_s" in t:
        floor = t["sha256_floor_s"]
        lines += ["", f"Compute floor: SHA256 of the {result['size_mb']} MB in memory on one core takes {floor:.2f} s "
                      f"({result['size_mb'] / floor:.0f} MB/s); our best is {t['ours']['best_s'] / floor:.2f}x "
                      f"and our median {t['ours']['median_s'] / floor:.2f}x that floor."]
    others = {who: t[who].get("other_processes_cpu_s") for who in ("curl", "ours") if who in t}
    if others["curl"] and others["ours"]:
        lines += ["", "CPU used by other processes during the rounds (0 when the machine is idle): curl "
                      + " ".join(f"{x:.2f}" for x in others["curl"]) + " s, ours "
                      + " ".join(f"{x:.2f}" for x in others["ours"]) + " s."]
    pages = result.get("pages")
    if pages:
        lines += ["", f"Page requests at {pages['files']} files (Library.search, first page + a random page, "
                      "ms per page):", "", "| when | n | p50 | p95 | max |", "|---|---|---|---|---|"]
        for key, label in (("idle", "idle"), ("during_download", "during the download"), ("after", "after it")):
            p = pages[key]
            lines.append(f"| {label} | {p['n']} | {p['p50_ms']:.1f} | {p['p95_ms']:.1f} | {p['max_ms']:.1f} |")
        lines.append(f"\nFirst page after the new file entered the index: {pages['first_after_ms']:.1f} ms.")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cache-dir", default=os.path.join("/tmp", "lora_core_bench_download"))
    parser.add_argument("--library", type=int, default=0, metavar="N",
                        help="also measure page requests at N files during a download (50000 as in the issue)")
    parser.add_argument("--library-cache", default=os.path.join("/tmp", "lora_core_bench_library"))
    parser.add_argument("--json", help="write the raw numbers here")
    parser.add_argument("--server-in-process", action="store_true",
                        help="run the loopback server as a thread of this process (the old, unfair set-up: "
                             "only our rounds share a GIL with it); for comparison only")
    parser.add_argument("--serve", nargs=2, metavar=("FILE", "SHA256"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        return serve_until_stdin_closes(*args.serve)
    if shutil.which("curl") is None:
        print("curl is not installed", file=sys.stderr)
        return 2
    src = os.path.join(args.cache_dir, f"src_{args.size_mb}mb.bin")
    sha = make_file(src, args.size_mb)
    work = os.path.join(args.cache_dir, "work")
    os.makedirs(work, exist_ok=True)
    if args.server_in_process:
        server, url = serve(src, sha)
        stop = lambda: (server.shutdown(), server.server_close())  # noqa: E731
    else:
        server = ServerProcess(src, sha)
        url, stop = server.url, server.close
    try:
        result = {"size_mb": args.size_mb, "rounds": args.rounds,
                  "server": "in this process" if args.server_in_process else "own process",
                  "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
                  "throughput": bench_throughput(url, sha, args.size_mb * MB, work, args.rounds,
                                                 None if args.server_in_process else server.proc.pid)}
        if args.library:
            result["pages"] = bench_pages_during_download(args.library, url, args.library_cache)
    finally:
        stop()
    command = "python bench/download.py " + " ".join(sys.argv[1:])
    print(render(result, command.strip()))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
