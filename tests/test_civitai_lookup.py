"""Civitai lookups by hash against a local mock speaking Civitai's v1 API shapes."""
import json

import pytest

try:
    from tests.civitai_mock import CivitaiMock, Reply, file_hashes, make_image, make_version, new_client
except ImportError:  # tests/ not a package: pytest puts it on sys.path
    from civitai_mock import CivitaiMock, Reply, file_hashes, make_image, make_version, new_client

from lora_core.library import civitai_nsfw as nsfw
from lora_core.library.civitai import API_KEY_ENV, ERROR, FOUND, NOT_FOUND, CivitaiClient

CONTENT_A = b"lora file A"
CONTENT_B = b"lora file B"
SHA_A = file_hashes(CONTENT_A)["SHA256"]
SHA_B = file_hashes(CONTENT_B)["SHA256"]
UNKNOWN = "ab" * 32


@pytest.fixture
def mock():
    with CivitaiMock() as m:
        m.add_version(make_version(
            111, 11, CONTENT_A, name="v2", model_name="Pastel Style", base_model="SDXL 1.0",
            trained_words=["pastel style", "  soft colors ", "", 5],
            images=[make_image(m.base_url, "a1.png", nsfw_level=4), make_image(m.base_url, "a2.png", 1)],
            nsfw_level=5,
        ))
        m.add_version(make_version(222, 22, CONTENT_B, model_name="Other", trained_words=[]))
        yield m


def test_lookup_found_fields(mock, tmp_path):
    client = new_client(mock.base_url, tmp_path)
    r = client.lookup(SHA_A.lower())
    assert r.status == FOUND and r.found and r.hash == SHA_A
    v = r.version
    assert (v.version_id, v.model_id, v.name, v.model_name) == (111, 11, "v2", "Pastel Style")
    assert v.base_model == "SDXL 1.0" and v.model_type == "LORA"
    assert v.trained_words == ("pastel style", "soft colors")  # blanks and non-strings dropped
    assert v.link == f"{mock.base_url}/models/11?modelVersionId=111"
    assert v.description == "<p>version notes</p>"  # kept as data, not rendered
    assert [i.nsfw_level for i in v.images] == [nsfw.R, nsfw.PG]
    assert v.images[0].url == f"{mock.base_url}/images/a1.png" and v.images[0].width == 64
    assert v.nsfw_level == nsfw.R  # 5 = PG|R -> the most explicit bit
    assert SHA_A in v.hashes and file_hashes(CONTENT_A)["AutoV2"] in v.hashes
    assert r.raw["id"] == 111 and r.raw["files"][0]["hashes"]["SHA256"] == SHA_A
    req = mock.requests[-1]
    assert req.method == "GET" and req.path == f"/api/v1/model-versions/by-hash/{SHA_A}"
    assert req.headers["User-Agent"].startswith("lora_core/")
    assert "Authorization" not in req.headers


def test_lookup_by_autov2_short_hash(mock, tmp_path):
    r = new_client(mock.base_url, tmp_path).lookup(file_hashes(CONTENT_B)["AutoV2"])
    assert r.status == FOUND and r.version.version_id == 222


def test_not_found_is_remembered_then_rechecked_after_days(mock, tmp_path):
    now = [1_000_000.0]
    client = new_client(mock.base_url, tmp_path, recheck_days=3, clock=lambda: now[0])
    r1 = client.lookup(UNKNOWN)
    assert r1.status == NOT_FOUND and not r1.cached
    assert mock.count("GET", "/api/v1/model-versions/by-hash/") == 1

    r2 = client.lookup(UNKNOWN)
    assert r2.status == NOT_FOUND and r2.cached
    assert mock.count("GET", "/api/v1/model-versions/by-hash/") == 1  # no second request

    # The record lives in the data dir: a new client (new app run) does not ask either.
    other = new_client(mock.base_url, tmp_path, recheck_days=3, clock=lambda: now[0])
    assert other.lookup(UNKNOWN).cached
    record = json.loads((tmp_path / "data" / "civitai_not_found.json").read_text())
    assert record["hashes"] == {UNKNOWN.upper(): 1_000_000.0}
    assert mock.count() == 1

    now[0] += 3 * 86400 + 1  # after recheck_days Civitai is asked again
    r3 = other.lookup(UNKNOWN)
    assert r3.status == NOT_FOUND and not r3.cached
    assert mock.count() == 2
    # force bypasses the record
    client.lookup(UNKNOWN, force=True)
    assert mock.count() == 3


def test_batch_lookup_one_request_and_progress(mock, tmp_path):
    client = new_client(mock.base_url, tmp_path)
    seen = []
    given = [SHA_A.lower(), UNKNOWN, SHA_B, "not-a-hash", SHA_A]
    out = client.lookup_many(given, progress=lambda d, t, r: seen.append((d, t, r.hash, r.status)))
    assert set(out) == set(given)
    assert out[SHA_A.lower()].status == FOUND and out[SHA_A.lower()].version.version_id == 111
    assert out[SHA_A] is out[SHA_A.lower()]
    assert out[SHA_B].version.model_name == "Other"
    assert out[UNKNOWN].status == NOT_FOUND
    assert out["not-a-hash"].status == ERROR and out["not-a-hash"].error_kind == "invalid"
    posts = [r for r in mock.requests if r.method == "POST"]
    assert len(posts) == 1 and mock.count() == 1
    assert posts[0].path == "/api/v1/model-versions/by-hash"
    assert sorted(json.loads(posts[0].body)) == sorted([SHA_A, UNKNOWN.upper(), SHA_B])
    assert [s[0] for s in seen] == [1, 2, 3, 4] and all(s[1] == 4 for s in seen)
    # the batch's misses are remembered too
    assert client.lookup(UNKNOWN).cached and mock.count() == 1


def test_batch_is_chunked(mock, tmp_path):
    client = new_client(mock.base_url, tmp_path, batch_size=2)
    hashes = [SHA_A, SHA_B] + [f"{i:064x}" for i in range(1, 4)]
    out = client.lookup_many(hashes)
    assert mock.count("POST") == 3
    assert [out[h].status for h in hashes] == [FOUND, FOUND, NOT_FOUND, NOT_FOUND, NOT_FOUND]


def test_batch_cancel_from_progress(mock, tmp_path):
    client = new_client(mock.base_url, tmp_path, batch_size=1)
    out = client.lookup_many([SHA_A, SHA_B, UNKNOWN], progress=lambda d, t, r: False)
    # progress returned False after the first answer: the other two were never asked
    assert mock.count("POST") == 1
    assert out[SHA_A].status == FOUND
    assert [out[h].error_kind for h in (SHA_B, UNKNOWN)] == ["cancelled", "cancelled"]


def test_batch_endpoint_missing_falls_back_to_single_lookups(mock, tmp_path):
    mock.script("POST", "/api/v1/model-versions/by-hash", [Reply(405, {"error": "method not allowed"})])
    out = new_client(mock.base_url, tmp_path).lookup_many([SHA_A, UNKNOWN])
    assert out[SHA_A].status == FOUND and out[UNKNOWN].status == NOT_FOUND
    assert mock.count("GET") == 2


def test_batch_answer_that_cannot_be_attributed_is_checked_singly(mock, tmp_path):
    """A version whose files do not list the hash asked for (e.g. an AutoV3 Civitai did not echo)
    must not make that hash "not on Civitai": such hashes are asked one by one."""
    stray = make_version(999, 99, b"something else")
    mock.script("POST", "/api/v1/model-versions/by-hash", [Reply(200, [stray, "junk", 7, {"id": "x"}])])
    client = new_client(mock.base_url, tmp_path)
    out = client.lookup_many([SHA_A, UNKNOWN])
    assert out[SHA_A].status == FOUND and out[SHA_A].version.version_id == 111
    assert out[UNKNOWN].status == NOT_FOUND
    assert mock.count("GET") == 2
    assert client.not_found.is_known_missing(UNKNOWN) and not client.not_found.is_known_missing(SHA_A)


def test_api_key_sent_as_bearer_only_to_civitai_host(mock, tmp_path, monkeypatch):
    monkeypatch.setenv(API_KEY_ENV, "env-secret")
    client = CivitaiClient(mock.base_url, data_dir=tmp_path, sleep=lambda s: None)
    assert client.lookup(SHA_A).found
    assert mock.requests[-1].headers["Authorization"] == "Bearer env-secret"

    explicit = CivitaiClient(mock.base_url, api_key="set-secret", data_dir=tmp_path)
    explicit.lookup(SHA_B)
    assert mock.requests[-1].headers["Authorization"] == "Bearer set-secret"

    # Images live on another host in real life (image.civitai.com): the key must not go there.
    mock.add_image("p.png", b"\x89PNG fake")
    other_host = mock.base_url.replace("127.0.0.1", "localhost")
    assert explicit.download_image(other_host + "/images/p.png") == b"\x89PNG fake"
    assert mock.requests[-1].path == "/images/p.png"
    assert "Authorization" not in mock.requests[-1].headers
    # ...while the Civitai host itself gets it
    explicit.download_image(mock.base_url + "/images/p.png")
    assert mock.requests[-1].headers["Authorization"] == "Bearer set-secret"


def test_no_key_when_env_disabled(mock, tmp_path, monkeypatch):
    monkeypatch.setenv(API_KEY_ENV, "env-secret")
    client = CivitaiClient(mock.base_url, data_dir=tmp_path, use_env_key=False)
    client.lookup(SHA_A)
    assert "Authorization" not in mock.requests[-1].headers


def test_bad_base_url_rejected():
    for bad in ("file:///etc", "civitai.com", "ftp://civitai.com"):
        with pytest.raises(ValueError):
            CivitaiClient(bad)
