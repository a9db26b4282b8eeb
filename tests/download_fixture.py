"""Shared pieces of the download tests: a Civitai/Hugging Face stand-in on 127.0.0.1 (tests/civitai_mock.py),
a library over a temporary models/Lora, and a queue pointed at the stand-in."""
from __future__ import annotations

import os
import time

import numpy as np
import pytest
from safetensors.numpy import save

from tests.civitai_mock import CivitaiMock, make_image, png_bytes
from lora_core.library import Library
from lora_core.library.downloads import DownloadQueue, DownloadSettings

LORA_EXTS = (".safetensors", ".pt", ".ckpt")


def lora_bytes(seed: int = 0, rows: int = 320) -> bytes:
    """A small valid kohya LoRA (~40 KB per 32 rows of 320): the index reads its header like any file."""
    rng = np.random.default_rng(seed)
    key = "lora_unet_down_blocks_0_attentions_0_proj_in"
    return save({f"{key}.lora_down.weight": rng.standard_normal((4, rows)).astype(np.float32),
                 f"{key}.lora_up.weight": rng.standard_normal((rows, 4)).astype(np.float32),
                 f"{key}.alpha": np.array(4.0, np.float32)}, metadata={"ss_network_dim": "4"})


class Env:
    def __init__(self, mock: CivitaiMock, tmp_path, **settings):
        self.mock = mock
        self.lora_dir = tmp_path / "models" / "Lora"
        self.lora_dir.mkdir(parents=True)
        self.library = Library([str(self.lora_dir)], str(tmp_path / "data"))
        self.library.scan()
        settings.setdefault("timeout", 5.0)
        self.settings = DownloadSettings(civitai_base=mock.base_url, hf_base=mock.base_url, **settings)
        self.queue = DownloadQueue(lambda: self.library, lambda: self.settings)

    def run(self, text: str, folder: str = "", timeout: float = 30) -> dict:
        job = self.queue.enqueue(text, folder)
        return self.queue.wait(job["id"], timeout)

    def wait_for_bytes(self, job_id: int, n: int, timeout: float = 20) -> dict:
        """Until the job has received n bytes (a slow transfer is under way); fails on a stop."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.queue.job(job_id)
            assert job["state"] not in ("done", "error", "cancelled"), job
            if job["done"] >= n:
                return job
            time.sleep(0.02)
        raise AssertionError(f"job {job_id} did not reach {n} bytes: {self.queue.job(job_id)}")

    def files(self) -> list[str]:
        """Every file under models/Lora, relative, hidden ones included."""
        out = []
        for dirpath, _, names in os.walk(self.lora_dir):
            out += [os.path.relpath(os.path.join(dirpath, n), self.lora_dir) for n in names]
        return sorted(out)

    def lora_files(self) -> list[str]:
        return [f for f in self.files() if f.endswith(LORA_EXTS)]

    def parts(self) -> list[str]:
        return [f for f in self.files() if ".part" in f]


@pytest.fixture
def mock():
    with CivitaiMock() as m:
        m.add_image("p.png", png_bytes())
        yield m


@pytest.fixture
def env(mock, tmp_path, monkeypatch):
    monkeypatch.delenv("CIVITAI_API_KEY", raising=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.setenv("HF_TOKEN_PATH", str(tmp_path / "no-hf-token"))  # never the developer's own token
    e = Env(mock, tmp_path)
    yield e
    e.queue.close()
    e.library.close()


def preview_image(mock) -> list:
    return [make_image(mock.base_url, "p.png")]
