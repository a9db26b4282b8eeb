"""Downloads into models/Lora against a Civitai/Hugging Face stand-in on 127.0.0.1: every link form,
the sidecars next to the file, the index updated without a scan, resume over HTTP Range."""
from __future__ import annotations

import hashlib
import json

from tests.civitai_mock import Reply, closed_port_url, file_hashes
from tests.download_fixture import env, lora_bytes, mock, preview_image  # noqa: F401 - fixtures

CONTENT = lora_bytes(1)


def test_model_url_saves_file_sidecars_and_indexes_it(env):
    m = env.mock
    m.add_download(5, 6, CONTENT, "style_x.safetensors", images=preview_image(m), trained_words=("xstyle", "ink"))
    job = env.run(f"{m.base_url}/models/6/some-slug", folder="styles")
    assert job["state"] == "done", job
    path = env.lora_dir / "styles" / "style_x.safetensors"
    assert path.read_bytes() == CONTENT
    assert job["done"] == job["total"] == len(CONTENT) and job["fraction"] == 1.0
    assert "SHA256 checked" in job["message"]
    info = json.loads((env.lora_dir / "styles" / "style_x.civitai.info").read_text())
    assert info["id"] == 5 and info["modelId"] == 6 and info["extensions"]["lora_core"]["hash"]
    assert (env.lora_dir / "styles" / "style_x.preview.png").read_bytes().startswith(b"\x89PNG")
    user = json.loads((env.lora_dir / "styles" / "style_x.json").read_text())
    assert user["activation text"] == "xstyle, ink"
    assert env.parts() == []
    # in the index at once: no scan ran since the fixture's first one
    entry = env.library.entry(str(path))
    assert entry.rel_name == "styles/style_x" and entry.family == "sd1" and entry.error is None
    assert entry.civitai and entry.trigger_words
    assert [e.name for e in env.library.search("xstyle").items] == ["style_x"]
    assert env.library.wait_for_hashes(30)
    assert env.library.entry(str(path)).sha256.upper() == file_hashes(CONTENT)["SHA256"]
    before = env.library.entry(str(path))
    report = env.library.scan()
    assert report.read == 0 and env.library.entry(str(path)).mtime == before.mtime  # the scan agrees


def test_version_links_air_and_ids_pick_the_right_version(env):
    m = env.mock
    old, new = lora_bytes(2), lora_bytes(3)
    m.add_download(10, 9, old, "v_old.safetensors")
    m.add_download(11, 9, new, "v_new.safetensors")  # newest first in models/9
    cases = [
        (f"{m.base_url}/models/9?modelVersionId=10", "v_old.safetensors"),
        (f"{m.base_url}/api/download/models/10", "v_old.safetensors"),
        (f"{m.base_url}/model-versions/10", "v_old.safetensors"),
        ("urn:air:sdxl:lora:civitai:9@10", "v_old.safetensors"),
        ("9", "v_new.safetensors"),  # a model id: its newest version
    ]
    for i, (text, name) in enumerate(cases):
        job = env.run(text, folder=f"c{i}")
        assert job["state"] == "done", (text, job)
        assert job["file_name"] == name, text
        assert (env.lora_dir / f"c{i}" / name).is_file()
    # a version named anywhere is asked for directly; only the bare model id reads the model
    assert m.count("GET", "/api/v1/model-versions/10") == 4 and m.count("GET", "/api/v1/models/9") == 1


def test_hugging_face_blob_link_checks_the_linked_etag_hash(env):
    m = env.mock
    url = m.add_hf_file("someone/loras", "sub/hf_style.safetensors", CONTENT)
    assert "/blob/" in url
    job = env.run(url)
    assert job["state"] == "done", job
    assert (env.lora_dir / "hf_style.safetensors").read_bytes() == CONTENT
    assert "SHA256 checked" in job["message"]  # against the X-Linked-Etag Hugging Face sends
    assert not (env.lora_dir / "hf_style.civitai.info").exists()
    assert env.library.entry(str(env.lora_dir / "hf_style.safetensors")).name == "hf_style"


def test_api_key_goes_to_civitai_only_never_to_the_cdn(env, mock, tmp_path):
    env.settings = type(env.settings)(**{**vars(env.settings), "civitai_key": "sekrit"})
    mock.add_download(5, 6, CONTENT, "k.safetensors")
    assert env.run("civitai:6@5")["state"] == "done"
    api = [r for r in mock.requests if r.path.startswith("/api/")]
    cdn = [r for r in mock.requests if r.path.startswith("/files/")]
    assert api and all(r.headers.get("Authorization") == "Bearer sekrit" for r in api)
    assert cdn and all("Authorization" not in r.headers for r in cdn)
    assert all(r.headers.get("Host", "").startswith("localhost") for r in cdn)


def test_truncated_transfer_resumes_with_range(env):
    m = env.mock
    big = lora_bytes(4, rows=3200)  # ~100 KB
    m.add_download(5, 6, big, "cut.safetensors", truncate_at=40_000, chunk=8192)
    job = env.run("civitai:6@5")
    assert job["state"] == "done", job
    assert (env.lora_dir / "cut.safetensors").read_bytes() == big
    served = m.files["cut.safetensors"].served
    assert served[0] == (None, 200) and served[-1][1] == 206 and served[-1][0].startswith("bytes=")
    assert any("ended early" in n for n in job["notes"])
    assert env.parts() == []


def test_server_without_range_support_restarts_from_zero(env):
    m = env.mock
    big = lora_bytes(5, rows=3200)
    m.add_download(5, 6, big, "norange.safetensors", truncate_at=40_000, ranges=False, chunk=8192)
    job = env.run("civitai:6@5")
    assert job["state"] == "done", job
    assert (env.lora_dir / "norange.safetensors").read_bytes() == big
    assert [s[1] for s in m.files["norange.safetensors"].served] == [200, 200]
    assert any("does not support resuming" in n for n in job["notes"]), job["notes"]


def test_pause_keeps_the_part_and_resume_continues_it(env):
    m = env.mock
    big = lora_bytes(6, rows=6400)  # ~200 KB, served slowly
    m.add_download(5, 6, big, "slow.safetensors", chunk=4096, chunk_delay=0.01)
    job = env.queue.enqueue("civitai:6@5")
    env.wait_for_bytes(job["id"], 20_000)
    env.queue.pause(job["id"])
    paused = env.queue.wait(job["id"], 10)
    assert paused["state"] == "paused", paused
    assert env.lora_files() == [] and env.parts() == [".slow.safetensors.part", ".slow.safetensors.part.json"]
    kept = (env.lora_dir / ".slow.safetensors.part").stat().st_size
    assert 0 < kept < len(big)
    m.files["slow.safetensors"].chunk_delay = 0
    env.queue.resume(job["id"])
    done = env.queue.wait(job["id"], 20)
    assert done["state"] == "done", done
    assert (env.lora_dir / "slow.safetensors").read_bytes() == big
    assert m.files["slow.safetensors"].served[-1] == (f"bytes={kept}-", 206)
    assert env.parts() == []


def test_cancel_removes_everything(env):
    m = env.mock
    big = lora_bytes(7, rows=6400)
    m.add_download(5, 6, big, "gone.safetensors", chunk=4096, chunk_delay=0.01)
    job = env.queue.enqueue("civitai:6@5")
    env.wait_for_bytes(job["id"], 10_000)
    env.queue.cancel(job["id"])
    assert env.queue.wait(job["id"], 10)["state"] == "cancelled"
    assert env.files() == []


def test_already_downloaded_file_is_recognised_by_hash(env):
    m = env.mock
    m.add_download(5, 6, CONTENT, "twice.safetensors")
    assert env.run("civitai:6@5")["state"] == "done"
    second = env.run("civitai:6@5")
    assert second["state"] == "done" and "already in the library" in second["message"]
    assert m.count("GET", "/files/") == 1


def test_queue_runs_jobs_in_order_and_lists_them(env):
    m = env.mock
    for i in range(3):
        m.add_download(20 + i, 30 + i, lora_bytes(10 + i), f"q{i}.safetensors")
    ids = [env.queue.enqueue(f"civitai:{30 + i}@{20 + i}")["id"] for i in range(3)]
    finals = [env.queue.wait(i, 30) for i in ids]
    assert [f["state"] for f in finals] == ["done"] * 3
    assert [j["file_name"] for j in env.queue.jobs()] == ["q0.safetensors", "q1.safetensors", "q2.safetensors"]
    assert env.queue.clear_finished() == 3 and env.queue.jobs() == []


def test_loopback_mirror_is_not_sent_to_a_proxy(env, monkeypatch):
    monkeypatch.setenv("HTTP_PROXY", closed_port_url())
    monkeypatch.setenv("http_proxy", closed_port_url())
    env.mock.add_download(5, 6, CONTENT, "np.safetensors")
    assert env.run("civitai:6@5")["state"] == "done"


def test_hugging_face_wrong_linked_hash_deletes_the_download(env):
    m = env.mock
    url = m.add_hf_file("o/r", "liar.safetensors", CONTENT)
    resolve = url.replace(m.base_url, "").replace("/blob/", "/resolve/")
    m.script("GET", resolve, [Reply(302, b"", headers={"Location": f"{m.cdn_url}/files/liar.safetensors",
                                                      "X-Linked-Etag": '"' + "ab" * 32 + '"'})])
    job = env.run(url)
    assert job["state"] == "error" and "SHA256 mismatch" in job["message"]
    assert env.files() == []


def test_file_without_a_published_hash_says_so(env):
    m = env.mock
    m.add_file("plain.safetensors", CONTENT)
    m.hf_files["/o/r/resolve/main/plain.safetensors"] = "plain.safetensors"
    m.script("GET", "/o/r/resolve/main/plain.safetensors",
             [Reply(302, b"", headers={"Location": f"{m.cdn_url}/files/plain.safetensors"})])
    job = env.run(f"{m.base_url}/o/r/resolve/main/plain.safetensors")
    assert job["state"] == "done" and "none published to check" in job["message"]
    assert hashlib.sha256(CONTENT).hexdigest().upper()[:12] in job["message"]
