"""The requests-based HTTP layer (civitai_http): the checks we keep on top of requests/urllib3."""
from __future__ import annotations

import pytest

from tests.civitai_mock import CivitaiMock, Reply, file_hashes, make_version, new_client
from lora_core.library.civitai import ERROR, FOUND
from lora_core.library.civitai_http import CivitaiHttpError, HttpClient, HttpSettings

CONTENT = b"http lora"
SHA = file_hashes(CONTENT)["SHA256"]
BY_HASH = "/api/v1/model-versions/by-hash/"


@pytest.fixture
def mock():
    with CivitaiMock() as m:
        m.add_version(make_version(5, 6, CONTENT))
        yield m


def test_redirect_off_http_is_refused(mock, tmp_path):
    mock.script("GET", BY_HASH, [Reply(302, b"", headers={"Location": "file:///etc/passwd"})])
    r = new_client(mock.base_url, tmp_path).lookup(SHA)
    assert r.status == ERROR and r.error_kind == "http" and "redirect to file: refused" in r.message


def test_redirect_loop_stops(mock, tmp_path):
    mock.script("GET", BY_HASH, [Reply(302, b"", headers={"Location": BY_HASH + SHA})] * 50)
    r = new_client(mock.base_url, tmp_path).lookup(SHA)
    assert r.status == ERROR and "too many redirects" in r.message
    assert mock.count("GET") == 11  # the first answer + max_redirects (10) followed


def test_key_is_dropped_when_a_redirect_leaves_the_civitai_host(mock, tmp_path):
    other = mock.base_url.replace("127.0.0.1", "localhost")
    mock.script("GET", BY_HASH, [Reply(307, b"", headers={"Location": other + BY_HASH + SHA})])
    r = new_client(mock.base_url, tmp_path, api_key="sekrit").lookup(SHA)
    assert r.status == FOUND
    first, second = mock.requests[-2:]
    assert first.headers["Authorization"] == "Bearer sekrit"
    assert second.headers["Host"].startswith("localhost") and "Authorization" not in second.headers


def test_same_host_redirect_keeps_the_key(mock, tmp_path):
    mock.script("GET", BY_HASH, [Reply(302, b"", headers={"Location": BY_HASH + SHA.lower()})])
    assert new_client(mock.base_url, tmp_path, api_key="sekrit").lookup(SHA).status == FOUND
    assert all(r.headers.get("Authorization") == "Bearer sekrit" for r in mock.requests)


def test_proxy_from_the_environment_is_used_for_remote_hosts(mock, monkeypatch):
    """The mock stands in as the proxy: a proxied request carries the absolute URL."""
    monkeypatch.setenv("HTTP_PROXY", mock.base_url)
    monkeypatch.setenv("http_proxy", mock.base_url)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    http = HttpClient(HttpSettings(timeout=5, max_retries=0))
    resp = http.request("GET", "http://civitai.example/api/v1/models/6")
    assert resp.status == 404  # the mock routes by path; what matters is where it went
    assert mock.requests[-1].path == "http://civitai.example/api/v1/models/6"


def test_transport_errors_become_messages(tmp_path):
    http = HttpClient(HttpSettings(timeout=2, max_retries=0, service="Hugging Face"))
    with pytest.raises(CivitaiHttpError) as err:
        http.request("GET", "http://127.0.0.1:9/x")
    assert err.value.kind == "network" and err.value.message.startswith("cannot reach Hugging Face")
    with pytest.raises(CivitaiHttpError) as err:
        http.request("GET", "not a url")
    assert err.value.kind == "network"
