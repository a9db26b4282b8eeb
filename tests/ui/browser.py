"""Helpers for the browser tests: a `serve` subprocess on a free 127.0.0.1 port and Debian's chromium."""
from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


def free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_chromium(timeout: float = 600) -> bool:
    """apt may still be installing chromium when the tests start: wait for a runnable binary."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK):
            try:
                out = subprocess.run([CHROMIUM, "--version"], capture_output=True, text=True, timeout=60)
                if out.returncode == 0:
                    return True
            except (OSError, subprocess.TimeoutExpired):
                pass
        time.sleep(3)
    return False


class Server:
    """`python -m lora_core serve` in a subprocess; its output goes to a log file for failures."""

    def __init__(self, workdir: Path, log_path: Path):
        """Runs in `workdir` with the default-looking `--models-dir models --data-dir data` (so the
        page, and the screenshots, show the paths a user sees)."""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.workdir = workdir
        self.log_path = log_path
        self._log = open(log_path, "wb")
        env = dict(os.environ, PYTHONUNBUFFERED="1", GRADIO_ANALYTICS_ENABLED="False",
                   PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "lora_core", "serve", "--host", "127.0.0.1", "--port", str(self.port),
             "--models-dir", "models", "--data-dir", "data"],
            cwd=workdir, stdout=self._log, stderr=subprocess.STDOUT, env=env,
        )

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def wait_ready(self, timeout: float = 600) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url + "/sdapi/v1/loras", timeout=5) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(1)
        raise TimeoutError(f"server not ready after {timeout}s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=20)
        self._log.close()


@contextlib.contextmanager
def launched_chromium():
    """Debian's chromium under Playwright with the flags this machine needs; closed on exit."""
    from playwright import sync_api as playwright_api

    assert wait_for_chromium(), f"{CHROMIUM} is not installed (apt-get install chromium)"
    with playwright_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield b
        finally:
            b.close()
