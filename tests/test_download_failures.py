"""Every way a download fails gets a message a user can act on, and models/Lora never holds a
half-written file under a final name (a resumable failure keeps only the hidden `.name.part`)."""
from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
from collections import namedtuple

import pytest

from tests.civitai_mock import Reply
from tests.download_fixture import env, lora_bytes, mock  # noqa: F401 - fixtures
from lora_core.library import download_sink, download_transfer
from lora_core.library.civitai_http import HttpClient, HttpSettings
from lora_core.library.download_transfer import Control

CONTENT = lora_bytes(21)
HTML = "<!DOCTYPE html><html><head><title>Just a moment...</title></head><body>cf</body></html>"


def _fail(env, text="civitai:6@5", folder=""):
    job = env.run(text, folder)
    assert job["state"] == "error", job
    assert env.lora_files() == [], env.files()
    return job


def test_403_says_an_api_key_is_needed_and_where_to_set_it(env):
    env.mock.add_download(5, 6, CONTENT, "locked.safetensors")
    env.mock.script("GET", "/api/download/models/5", [Reply(403, {"error": "Unauthorized"})])
    job = _fail(env)
    assert "HTTP 403" in job["message"] and "API key" in job["message"]
    assert "CIVITAI_API_KEY" in job["message"] and "Settings" in job["message"]
    assert env.files() == []


def test_403_on_the_api_itself_gives_the_same_advice(env):
    env.mock.script("GET", "/api/v1/model-versions/5", [Reply(401, {"error": "Unauthorized"})])
    job = _fail(env)
    assert "API key" in job["message"] and "CIVITAI_API_KEY" in job["message"]


def test_404_model_and_404_file(env):
    job = _fail(env, "civitai:999")
    assert "Civitai model 999 not found" in job["message"] and "404" in job["message"]
    env.mock.add_download(5, 6, CONTENT, "vanished.safetensors")
    env.mock.script("GET", "/files/vanished", [Reply(404, "no such object")])
    job = _fail(env)
    assert "not found (HTTP 404)" in job["message"] and "/api/download/models/5" in job["message"]
    assert env.files() == []


def test_html_page_instead_of_the_file(env):
    env.mock.add_download(5, 6, CONTENT, "page.safetensors")
    env.mock.script("GET", "/files/page", [Reply(200, HTML, content_type="text/html; charset=utf-8")])
    job = _fail(env)
    assert "web page instead of the file" in job["message"]
    assert env.files() == []


def test_html_page_instead_of_the_api_json(env):
    env.mock.script("GET", "/api/v1/model-versions/5", [Reply(200, HTML, content_type="text/html")])
    assert "HTML" in _fail(env)["message"]


def test_wrong_hash_deletes_the_download(env):
    env.mock.add_download(5, 6, CONTENT, "bad.safetensors", served_sha256="AB" * 32)
    job = _fail(env)
    assert "SHA256 mismatch" in job["message"] and "ABABABAB" in job["message"] and "deleted" in job["message"]
    assert env.files() == []


@pytest.mark.parametrize("direct", [True, False], ids=["O_DIRECT", "buffered"])
def test_disk_full_while_writing_leaves_nothing(env, monkeypatch, direct):
    """Both writers: the direct one (Linux) and the buffered one (elsewhere, or a file system that
    refuses O_DIRECT). The disk fills after the first write."""
    if direct and not download_sink.USE_DIRECT:
        pytest.skip("no O_DIRECT on this system")
    monkeypatch.setattr(download_sink, "USE_DIRECT", direct)
    monkeypatch.setattr(download_sink, "DIRECT_BUFFER", 16 * 4096)  # several direct writes for 200 kB
    env.mock.add_download(5, 6, lora_bytes(22, rows=3200), "full.safetensors", chunk=4096, chunk_delay=0.001)
    written = []

    def full_disk(*args):
        if written:
            raise OSError(errno.ENOSPC, "No space left on device")
        written.append(len(args[1]))
        return real(*args)

    real = getattr(download_sink, "_pwrite" if direct else "_write")
    monkeypatch.setattr(download_sink, "_pwrite" if direct else "_write", full_disk)
    job = _fail(env)
    assert written, "the disk-full seam was never reached"
    assert "disk full" in job["message"] and "Free some space" in job["message"]
    assert str(env.lora_dir) in job["message"]
    assert env.files() == []


def test_not_enough_space_is_said_before_downloading(env, monkeypatch):
    env.mock.add_download(5, 6, CONTENT, "big.safetensors")
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**9, 10**9 - 1000, 1000))
    job = _fail(env)
    assert "not enough disk space" in job["message"] and "MB free" in job["message"]
    assert env.files() == []


def test_truncated_every_time_gives_up_but_keeps_the_part_to_resume(env):
    env.mock.add_download(5, 6, CONTENT, "cut.safetensors", truncate_at=10_000, truncate_times=99, ranges=False)
    job = _fail(env)
    assert "ended early" in job["message"] and "gave up" in job["message"] and job["resumable"]
    assert env.parts() == [".cut.safetensors.part", ".cut.safetensors.part.json"]
    env.mock.files["cut.safetensors"].truncate_times = 0  # the server recovers: resume finishes it
    env.queue.resume(job["id"])
    assert env.queue.wait(job["id"], 20)["state"] == "done"
    assert (env.lora_dir / "cut.safetensors").read_bytes() == CONTENT and env.parts() == []


def test_file_changed_on_the_server_restarts_cleanly(env):
    """Paused half way; the file under the same link changes (new ETag): the resume's If-Range gets
    the whole new file, which is what ends up on disk (its hash is the one Hugging Face links)."""
    m = env.mock
    old = lora_bytes(30, rows=6400)
    url = m.add_hf_file("o/r", "changing.safetensors", old, chunk=4096, chunk_delay=0.01)
    job = env.queue.enqueue(url)
    env.wait_for_bytes(job["id"], 20_000)
    env.queue.pause(job["id"])
    assert env.queue.wait(job["id"], 10)["state"] == "paused"
    new = lora_bytes(31, rows=6400)
    served = m.files["changing.safetensors"]
    served.content, served.chunk_delay = new, 0
    env.queue.resume(job["id"])
    done = env.queue.wait(job["id"], 20)
    assert done["state"] == "done", done
    assert (env.lora_dir / "changing.safetensors").read_bytes() == new
    assert served.served[-1][1] == 200 and served.served[-1][0].startswith("bytes=")
    assert any("changed on the server" in n for n in done["notes"]), done["notes"]


def test_changed_total_in_content_range_restarts(tmp_path, mock):
    """A server that honours the Range but whose file grew (same weak validator): start over."""
    first, second = lora_bytes(40, rows=640), lora_bytes(41, rows=960)
    served = mock.add_file("grow.safetensors", first, etag='W/"same"')
    final = str(tmp_path / "grow.safetensors")
    part, meta = download_transfer.part_paths(final)
    with open(part, "wb") as fh:
        fh.write(first[:5000])
    with open(meta, "w") as fh:
        fh.write('{"url": "%s/files/grow.safetensors", "sha256": null, "etag": null, "last_modified": null, '
                 '"total": %d}' % (mock.base_url, len(first)))
    served.content = second
    notes = []
    http = HttpClient(HttpSettings(timeout=5))
    download_transfer.fetch(http, f"{mock.base_url}/files/grow.safetensors", final, Control(note=notes.append))
    assert open(final, "rb").read() == second
    assert notes and "changed on the server" in notes[0]
    assert [s[1] for s in served.served] == [206, 200]
    assert sorted(os.listdir(tmp_path)) == ["grow.safetensors"]


def test_existing_different_file_is_never_replaced(env):
    env.mock.add_download(5, 6, CONTENT, "mine.safetensors")
    (env.lora_dir / "mine.safetensors").write_bytes(b"the user's own file")
    job = env.run("civitai:6@5")
    assert job["state"] == "error" and "already exists" in job["message"]
    assert (env.lora_dir / "mine.safetensors").read_bytes() == b"the user's own file"
    assert env.parts() == []


@pytest.mark.parametrize("text,reason", [
    ("", "nothing to download"),
    ("https://example.com/x.safetensors", "unsupported site"),
    ("https://civitai.com/user/someone", "not a Civitai model"),
    ("https://huggingface.co/o/r/tree/main", "not a Hugging Face file link"),
    ("ftp://civitai.com/models/1", "not a link"),
])
def test_unusable_links_are_refused_when_queued(env, text, reason):
    with pytest.raises(ValueError, match=reason):
        env.queue.enqueue(text)
    assert env.queue.jobs() == []


@pytest.mark.parametrize("folder", ["../outside", "/abs", "a/../../b", ".hidden"])
def test_folders_outside_the_lora_folder_are_refused(env, folder):
    with pytest.raises(ValueError, match="plain sub-folder"):
        env.queue.enqueue("civitai:6@5", folder)


def test_civitai_file_name_cannot_escape_or_be_a_non_lora(env):
    env.mock.add_download(5, 6, CONTENT, "../../evil.safetensors")
    job = env.run("civitai:6@5")
    assert job["state"] == "done" and job["file_name"] == "evil.safetensors"
    assert env.lora_files() == ["evil.safetensors"]
    env.mock.add_download(7, 8, CONTENT, "setup.exe")
    job = env.run("civitai:8@7")
    assert job["state"] == "error" and "'setup.exe' is not a LoRA file" in job["message"]
    assert env.files() == ["evil.civitai.info", "evil.json", "evil.safetensors"]  # nothing new


def test_timeout_on_a_stalled_server_is_resumable(env, mock):
    env.settings = type(env.settings)(**{**vars(env.settings), "timeout": 0.3, "max_retries": 0})
    import threading

    gate = threading.Event()
    mock.add_download(5, 6, CONTENT, "stall.safetensors", gate=gate)
    job = env.run("civitai:6@5", timeout=20)
    gate.set()
    assert job["state"] == "error" and job["resumable"], job
    assert "ended early" in job["message"] or "did not answer" in job["message"]
    assert env.lora_files() == []


def _whole_part(tmp_path, mock, content, sha, etag=None, name="whole.safetensors"):
    """A part holding every byte of the file and its record, as a pause or a crash after the
    last byte and before the link leaves it."""
    served = mock.add_file(name, content, etag=etag)
    final = str(tmp_path / name)
    part, meta = download_transfer.part_paths(final)
    with open(part, "wb") as fh:
        fh.write(content)
    with open(meta, "w") as fh:
        json.dump({"url": f"{mock.base_url}/files/{name}", "sha256": sha, "etag": served.current_etag(),
                   "last_modified": None, "total": len(content)}, fh)
    return served, final


def test_a_part_with_every_byte_is_checked_and_finished_without_downloading(tmp_path, mock):
    content = lora_bytes(42, rows=640)
    sha = hashlib.sha256(content).hexdigest().upper()
    served, final = _whole_part(tmp_path, mock, content, sha)
    notes = []
    got = download_transfer.fetch(HttpClient(HttpSettings(timeout=5)), f"{mock.base_url}/files/whole.safetensors",
                                  final, Control(note=notes.append), sha256=sha)
    assert got == sha and open(final, "rb").read() == content
    assert [s[1] for s in served.served] == [416]  # one request, no body downloaded again
    assert any("already held the whole file" in n for n in notes), notes
    assert sorted(os.listdir(tmp_path)) == ["whole.safetensors"]


def test_a_whole_part_with_wrong_bytes_is_downloaded_again(tmp_path, mock):
    content = lora_bytes(43, rows=640)
    sha = hashlib.sha256(content).hexdigest().upper()
    served, final = _whole_part(tmp_path, mock, content, sha)
    part, _ = download_transfer.part_paths(final)
    with open(part, "r+b") as fh:  # same length, one byte different (a bad disk, a changed file)
        fh.seek(len(content) // 2)
        fh.write(bytes([content[len(content) // 2] ^ 0xFF]))
    notes = []
    download_transfer.fetch(HttpClient(HttpSettings(timeout=5)), f"{mock.base_url}/files/whole.safetensors",
                            final, Control(note=notes.append), sha256=sha)
    assert open(final, "rb").read() == content
    assert [s[1] for s in served.served] == [416, 200]
    assert any("does not match the published hash" in n for n in notes), notes
    assert sorted(os.listdir(tmp_path)) == ["whole.safetensors"]


def test_a_whole_part_nothing_vouches_for_is_downloaded_again(tmp_path, mock):
    """No published hash and no strong ETag: the length alone does not prove the bytes."""
    content = lora_bytes(44, rows=640)
    served, final = _whole_part(tmp_path, mock, content, None, etag='W/"weak"')
    download_transfer.fetch(HttpClient(HttpSettings(timeout=5)), f"{mock.base_url}/files/whole.safetensors",
                            final, Control())
    assert open(final, "rb").read() == content
    assert [s[1] for s in served.served] == [416, 200]
