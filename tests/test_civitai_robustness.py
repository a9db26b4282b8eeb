"""Civitai answers are untrusted and the network may be absent: results, never exceptions."""
import json
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

try:
    from tests.civitai_mock import CivitaiMock, Reply, closed_port_url, file_hashes, make_version, new_client
except ImportError:
    from civitai_mock import CivitaiMock, Reply, closed_port_url, file_hashes, make_version, new_client

from lora_core.library.civitai import ERROR, FOUND, NOT_FOUND
from lora_core.library.civitai_http import HTML_MESSAGE, retry_after_seconds
from lora_core.library.civitai_parse import CivitaiShapeError, parse_model, parse_version

CONTENT = b"robust lora"
SHA = file_hashes(CONTENT)["SHA256"]
BY_HASH = "/api/v1/model-versions/by-hash/"
HTML_PAGE = "<!DOCTYPE html><html><head><title>Just a moment...</title></head><body>cf</body></html>"


@pytest.fixture
def mock():
    with CivitaiMock() as m:
        m.add_version(make_version(5, 6, CONTENT))
        yield m


def test_429_then_success_honours_retry_after(mock, tmp_path):
    mock.script("GET", BY_HASH, [Reply(429, {"error": "slow down"}, headers={"Retry-After": "7"}),
                                 Reply(503, "busy")])
    sleeps = []
    r = new_client(mock.base_url, tmp_path, sleeps=sleeps, backoff_base=0.5, backoff_cap=30).lookup(SHA)
    assert r.status == FOUND and r.version.version_id == 5
    assert mock.count("GET") == 3
    assert sleeps == [7.0, 1.0]  # Retry-After wins over the 0.5 s backoff; then 0.5*2


def test_retry_after_is_capped(mock, tmp_path):
    mock.script("GET", BY_HASH, [Reply(429, "", headers={"Retry-After": "86400"})])
    sleeps = []
    assert new_client(mock.base_url, tmp_path, sleeps=sleeps, backoff_cap=4).lookup(SHA).found
    assert sleeps == [4]


def test_500_repeated_gives_error_after_retry_cap(mock, tmp_path):
    mock.script("GET", BY_HASH, [Reply(500, {"error": "boom"})] * 10)
    sleeps = []
    client = new_client(mock.base_url, tmp_path, sleeps=sleeps, max_retries=3, backoff_base=1, backoff_cap=3)
    r = client.lookup(SHA)
    assert r.status == ERROR and r.error_kind == "http" and "HTTP 500" in r.message
    assert mock.count("GET") == 4  # first try + 3 retries, then it stops
    assert sleeps == [1, 2, 3]  # exponential, capped at backoff_cap
    # errors are not remembered as "not on Civitai"
    assert not client.not_found.is_known_missing(SHA)


def test_client_errors_are_not_retried(mock, tmp_path):
    mock.script("GET", BY_HASH, [Reply(401, {"error": "bad key"})])
    r = new_client(mock.base_url, tmp_path).lookup(SHA)
    assert r.status == ERROR and "API key" in r.message and mock.count() == 1


@pytest.mark.parametrize("status", [200, 403, 503, 404])
def test_html_answer_detected(mock, tmp_path, status):
    mock.script("GET", BY_HASH, [Reply(status, HTML_PAGE, content_type="text/html")] * 3)
    client = new_client(mock.base_url, tmp_path, max_retries=2)
    r = client.lookup(SHA)
    assert r.status == ERROR and r.error_kind == "html"
    assert r.message.startswith(HTML_MESSAGE)
    # an HTML 404 (proxy, maintenance page) must not mark the hash as absent from Civitai
    assert not client.not_found.is_known_missing(SHA)


def test_html_without_content_type_detected(mock, tmp_path):
    mock.script("GET", BY_HASH, [Reply(200, b"\n  <html><body>maintenance</body></html>")])
    r = new_client(mock.base_url, tmp_path).lookup(SHA)
    assert r.error_kind == "html" and HTML_MESSAGE in r.message


@pytest.mark.parametrize("body", [b"{not json", b"\xff\xfe\x00garbage", b"", b"[" * 100_000])
def test_malformed_json(mock, tmp_path, body):
    mock.script("GET", BY_HASH, [Reply(200, body, content_type="application/json")])
    r = new_client(mock.base_url, tmp_path).lookup(SHA)
    assert r.status == ERROR and r.error_kind == "json" and "malformed JSON" in r.message


@pytest.mark.parametrize("body", [[1, 2], b"\"text\"", 42, {"id": "12", "modelId": 3}, {"id": True, "modelId": 1},
                                  {"modelId": 3}, {"id": -1, "modelId": 3}, {"id": 2**60, "modelId": 3}])
def test_wrong_shapes_are_errors(mock, tmp_path, body):
    mock.script("GET", BY_HASH, [Reply(200, body)])
    r = new_client(mock.base_url, tmp_path).lookup(SHA)
    assert r.status == ERROR and r.error_kind == "shape", r


def test_junk_fields_ignored_and_capped(mock, tmp_path):
    junk = make_version(5, 6, CONTENT)
    junk.update({
        "name": ["not", "a", "string"], "baseModel": None, "trainedWords": ["ok"] * 5000 + [{"x": 1}],
        "description": "d" * 1_000_000, "images": [
            {"url": "file:///etc/passwd", "nsfwLevel": 1},
            {"url": "javascript:alert(1)", "nsfwLevel": 1},
            {"url": "https://img.example/ok.png", "nsfwLevel": "X", "width": "wide"},
            "junk", None,
        ],
        "model": "not an object", "unexpected": {"deep": [1, 2, 3]},
    })
    mock.script("GET", BY_HASH, [Reply(200, junk)])
    r = new_client(mock.base_url, tmp_path).lookup(SHA)
    assert r.status == FOUND
    v = r.version
    assert v.name == "" and v.base_model == "" and v.model_name == ""
    assert len(v.trained_words) == 200 and len(v.description) == 200_000
    assert [(i.url, i.nsfw_level, i.width) for i in v.images] == [("https://img.example/ok.png", 8, None)]


def test_huge_body_refused(mock, tmp_path):
    big = json.dumps({"id": 5, "modelId": 6, "description": "x" * 3000})
    mock.script("GET", BY_HASH, [Reply(200, big, content_type="application/json")])
    r = new_client(mock.base_url, tmp_path, max_body=1000).lookup(SHA)
    assert r.status == ERROR and r.error_kind == "too_large" and "too large" in r.message


def test_huge_body_without_content_length_refused(tmp_path):
    """A chunked answer gives no Content-Length: the reader itself must stop at the cap."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Chunked(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a):
            pass

        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            try:
                for _ in range(50):
                    chunk = b"[" + b"0," * 5000 + b"0]"
                    self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                self.wfile.write(b"0\r\n\r\n")
            except OSError:
                pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Chunked)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        r = new_client(url, tmp_path, max_body=100_000).lookup(SHA)
        assert r.error_kind == "too_large"
    finally:
        server.shutdown()
        server.server_close()


def test_timeout(mock, tmp_path):
    mock.script("GET", BY_HASH, [Reply(200, {"id": 5, "modelId": 6}, delay=1.0)] * 2)
    sleeps = []
    start = time.monotonic()
    r = new_client(mock.base_url, tmp_path, sleeps=sleeps, timeout=0.2, max_retries=1).lookup(SHA)
    assert r.status == ERROR and r.error_kind == "timeout" and "0.2 s" in r.message
    assert mock.count() == 2 and len(sleeps) == 1
    assert time.monotonic() - start < 2.0


def test_offline_is_an_error_result_and_fast(tmp_path):
    client = new_client(closed_port_url(), tmp_path)
    start = time.monotonic()
    r = client.lookup(SHA)
    assert r.status == ERROR and r.error_kind == "network" and "cannot reach Civitai" in r.message
    many = client.lookup_many([SHA] + [f"{i:064x}" for i in range(1, 300)], progress=None)
    assert all(x.status == ERROR for x in many.values())
    assert {x.error_kind for x in many.values()} == {"network", "skipped"}
    up = client.check_update(6, 5)
    assert up.status == ERROR and not up.has_update
    assert time.monotonic() - start < 5.0


def test_batch_stops_after_transport_failure(mock, tmp_path):
    mock.script("POST", "/api/v1/model-versions/by-hash", [Reply(503, "down")] * 10)
    client = new_client(mock.base_url, tmp_path, batch_size=2, max_retries=1)
    out = client.lookup_many([f"{i:064x}" for i in range(1, 9)])
    assert mock.count("POST") == 2  # one chunk (try + retry), the other 3 chunks not sent
    kinds = [r.error_kind for r in out.values()]
    assert kinds[:2] == ["http", "http"] and set(kinds[2:]) == {"skipped"}
    assert not any(client.not_found.is_known_missing(h) for h in out)


def test_batch_json_404_is_not_a_miss_for_every_hash(mock, tmp_path):
    """404 on the batch endpoint means the endpoint is gone, not that the hashes are unknown."""
    mock.script("POST", "/api/v1/model-versions/by-hash", [Reply(404, {"error": "no route"})])
    out = new_client(mock.base_url, tmp_path).lookup_many([SHA])
    assert out[SHA].status == FOUND and mock.count("GET") == 1


def test_model_endpoint_robustness(mock, tmp_path):
    mock.script("GET", "/api/v1/models/", [Reply(200, HTML_PAGE, content_type="text/html"),
                                           Reply(200, {"id": "6"}), Reply(200, b"{oops")])
    client = new_client(mock.base_url, tmp_path)
    assert client.check_update(6, 5).message.startswith(HTML_MESSAGE)
    assert "unexpected answer" in client.check_update(6, 5).message
    assert "malformed JSON" in client.check_update(6, 5).message
    assert client.check_update(6, 5).status == NOT_FOUND  # no such model in the mock


def test_retry_after_parsing():
    assert retry_after_seconds("12") == 12.0
    assert retry_after_seconds(" 0 ") == 0.0
    assert retry_after_seconds("junk") is None and retry_after_seconds(None) is None
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # in the past
    assert 50 < retry_after_seconds(time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 60))) <= 60


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(
        st.sampled_from(["id", "modelId", "name", "model", "images", "trainedWords", "files", "hashes",
                         "nsfwLevel", "nsfw", "url", "modelVersions", "description", "type", "x"]),
        children, max_size=6),
    max_leaves=30,
)


@settings(max_examples=150, deadline=None)
@given(json_values)
def test_parsers_never_crash_on_junk(value):
    for parse in (lambda v: parse_version(v, "https://civitai.com"), parse_model):
        try:
            parse(value)
        except CivitaiShapeError:
            pass
