"""A local stand-in for the Civitai REST API (v1), for tests. Stdlib only.

Serves on 127.0.0.1 with an ephemeral port:
    GET  /api/v1/model-versions/by-hash/{hash}   -> the version whose files[].hashes hold that hash, or 404
    POST /api/v1/model-versions/by-hash          -> JSON array of the versions matching any hash in the body
    GET  /api/v1/models/{id}                     -> the model with its modelVersions (newest first), or 404
    GET  /images/{name}                          -> image bytes registered with add_image

Answers follow the shapes in Civitai's public API documentation (developer.civitai.com, "Model
versions" and the REST API reference): id, modelId, name, baseModel, trainedWords, files[].hashes
{AutoV1, AutoV2, SHA256, CRC32, BLAKE3, AutoV3}, images[{url, nsfwLevel, width, height, hash, type}],
model{name, type, nsfw, poi}, description, downloadUrl, ... 404s carry `{"error": "..."}` like Civitai.

`script(method, path_prefix, replies)` queues canned replies (status, body, headers, delay) that are
served, in order, before the normal routes: 429-then-success, 5xx, HTML pages, slow answers, junk.
Every request is recorded (method, path, headers, body) so tests can count what reached the server.
"""
from __future__ import annotations

import hashlib
import json
import threading
import time
import zlib
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Reply:
    status: int = 200
    body: object = b""  # bytes, str, or anything JSON-serialisable
    headers: dict = field(default_factory=dict)
    delay: float = 0.0  # seconds to wait before answering (timeouts)
    content_type: str | None = None

    def encoded(self) -> tuple[bytes, str]:
        if isinstance(self.body, bytes):
            return self.body, self.content_type or "application/octet-stream"
        if isinstance(self.body, str):
            return self.body.encode("utf-8"), self.content_type or "text/plain; charset=utf-8"
        return json.dumps(self.body).encode("utf-8"), self.content_type or "application/json; charset=utf-8"


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict
    body: bytes


def file_hashes(content: bytes) -> dict:
    """Hashes of a file's bytes in Civitai's naming. AutoV3/BLAKE3 are stand-ins of the right length."""
    sha = hashlib.sha256(content).hexdigest().upper()
    return {
        "AutoV1": hashlib.sha256(b"v1" + content).hexdigest()[:8].upper(),
        "AutoV2": sha[:10],
        "SHA256": sha,
        "CRC32": f"{zlib.crc32(content):08X}",
        "BLAKE3": hashlib.blake2b(content, digest_size=32).hexdigest().upper(),
        "AutoV3": hashlib.sha256(b"v3" + content).hexdigest()[:12].upper(),
    }


def make_image(base_url: str, name: str, nsfw_level: int = 1, width: int = 64, height: int = 96,
               kind: str = "image") -> dict:
    return {
        "id": abs(hash(name)) % 10_000_000,
        "url": f"{base_url}/images/{name}",
        "nsfwLevel": nsfw_level,
        "width": width,
        "height": height,
        "hash": "U5ECWp00~q%M%MRjM{t7",
        "type": kind,
        "metadata": {"hash": "U5ECWp00~q%M%MRjM{t7", "size": 1234, "width": width, "height": height},
        "availability": "Public",
        "hasMeta": True,
        "hasPositivePrompt": True,
        "onSite": False,
        "remixOfId": None,
        "minor": False,
        "poi": False,
    }


def make_version(version_id: int, model_id: int, content: bytes, *, name: str = "v1.0",
                 model_name: str = "Test LoRA", model_type: str = "LORA", base_model: str = "SD 1.5",
                 trained_words=("trigger word",), description: str | None = "<p>version notes</p>",
                 images=(), nsfw_level: int = 1, file_name: str = "test_lora.safetensors") -> dict:
    hashes = file_hashes(content)
    return {
        "id": version_id,
        "modelId": model_id,
        "name": name,
        "createdAt": "2024-05-01T10:00:00.000Z",
        "updatedAt": "2024-05-02T10:00:00.000Z",
        "status": "Published",
        "publishedAt": "2024-05-02T10:00:00.000Z",
        "trainedWords": list(trained_words),
        "trainingStatus": None,
        "trainingDetails": None,
        "baseModel": base_model,
        "baseModelType": "Standard",
        "earlyAccessEndsAt": None,
        "earlyAccessConfig": None,
        "description": description,
        "uploadType": "Created",
        "usageControl": "Download",
        "air": f"urn:air:sd1:lora:civitai:{model_id}@{version_id}",
        "nsfwLevel": nsfw_level,
        "stats": {"downloadCount": 1234, "ratingCount": 0, "rating": 0, "thumbsUpCount": 99},
        "model": {"name": model_name, "type": model_type, "nsfw": nsfw_level >= 4, "poi": False},
        "files": [
            {
                "id": version_id * 10,
                "sizeKB": round(len(content) / 1024, 3),
                "name": file_name,
                "type": "Model",
                "pickleScanResult": "Success",
                "pickleScanMessage": "No Pickle imports",
                "virusScanResult": "Success",
                "virusScanMessage": None,
                "scannedAt": "2024-05-01T10:05:00.000Z",
                "metadata": {"format": "SafeTensor", "size": None, "fp": None},
                "hashes": hashes,
                "primary": True,
                "downloadUrl": f"https://civitai.com/api/download/models/{version_id}",
            }
        ],
        "images": list(images),
        "downloadUrl": f"https://civitai.com/api/download/models/{version_id}",
    }


def make_model(model_id: int, versions: list[dict], *, name: str = "Test LoRA",
               description: str = "<p>model <b>description</b></p>") -> dict:
    """GET /api/v1/models/{id}: versions newest first, as Civitai lists them."""
    return {
        "id": model_id,
        "name": name,
        "description": description,
        "allowNoCredit": True,
        "allowCommercialUse": ["Image", "RentCivit"],
        "allowDerivatives": True,
        "allowDifferentLicense": True,
        "type": "LORA",
        "minor": False,
        "poi": False,
        "nsfw": False,
        "nsfwLevel": 1,
        "cosmetic": None,
        "stats": {"downloadCount": 1234, "favoriteCount": 0, "thumbsUpCount": 99, "commentCount": 3},
        "creator": {"username": "someone", "image": "https://image.civitai.com/avatar.png"},
        "tags": ["style", "anime"],
        "modelVersions": [
            {k: v for k, v in ver.items() if k not in ("modelId", "model")} for ver in versions
        ],
    }


class CivitaiMock:
    def __init__(self):
        self.versions: list[dict] = []
        self.models: dict[int, dict] = {}
        self.images: dict[str, tuple[bytes, str]] = {}
        self.requests: list[Recorded] = []
        self._scripts: list[tuple[str, str, list[Reply]]] = []
        self.files: dict[str, "ServedFile"] = {}  # /files/{name}: downloads
        self.download_names: dict[int, str] = {}  # version id -> file served for /api/download/models/{id}
        self.hf_files: dict[str, str] = {}  # "/owner/repo/resolve/rev/path" -> file name
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ---- content ----
    def add_version(self, version: dict) -> dict:
        self.versions.append(version)
        return version

    def add_model(self, model: dict) -> dict:
        self.models[model["id"]] = model
        return model

    def add_image(self, name: str, data: bytes, content_type: str = "image/png") -> str:
        self.images[name] = (data, content_type)
        return f"{self.base_url}/images/{name}"

    def script(self, method: str, path_prefix: str, replies: list[Reply]) -> None:
        """Serve these replies, one per matching request, before the normal routes."""
        with self._lock:
            self._scripts.append((method.upper(), path_prefix, list(replies)))

    def count(self, method: str | None = None, path_prefix: str = "") -> int:
        with self._lock:
            return sum(1 for r in self.requests
                       if (method is None or r.method == method.upper()) and r.path.startswith(path_prefix))

    # ---- downloads ----
    def add_file(self, name: str, content: bytes, **options) -> "ServedFile":
        """Serve `content` at /files/{name}; options: see ServedFile (ranges, chunk_delay, truncate_at...)."""
        served = ServedFile(content, **options)
        self.files[name] = served
        return served

    def add_download(self, version_id: int, model_id: int, content: bytes, file_name: str = "test_lora.safetensors",
                     *, images=(), trained_words=("trigger word",), model_name: str = "Test LoRA",
                     served_sha256: str | None = None, **file_options) -> dict:
        """A model + version whose file Civitai serves through /api/download/models/{version_id}."""
        version = make_version(version_id, model_id, content, file_name=file_name, images=images,
                               trained_words=trained_words, model_name=model_name)
        url = f"{self.base_url}/api/download/models/{version_id}"
        version["downloadUrl"] = version["files"][0]["downloadUrl"] = url
        if served_sha256 is not None:
            version["files"][0]["hashes"]["SHA256"] = served_sha256
        self.add_version(version)
        model = self.models.get(model_id)
        versions = [version] + ([v for v in model["modelVersions"]] if model else [])
        self.add_model(make_model(model_id, versions, name=model_name))
        self.add_file(file_name, content, **file_options)
        self.download_names[version_id] = file_name
        return version

    def add_hf_file(self, repo: str, path: str, content: bytes, rev: str = "main", **file_options) -> str:
        """A Hugging Face file: /{repo}/resolve/{rev}/{path} redirects to the file with X-Linked-Etag."""
        name = path.rsplit("/", 1)[-1]
        self.add_file(name, content, **file_options)
        self.hf_files[f"/{repo}/resolve/{rev}/{path}"] = name
        return f"{self.base_url}/{repo}/blob/{rev}/{path}"

    @property
    def cdn_url(self) -> str:
        """The same server under another host name (a CDN in real life)."""
        return self.base_url.replace("127.0.0.1", "localhost")

    def _serve_file(self, handler) -> bool:
        if handler.command not in ("GET", "HEAD") or not handler.path.startswith("/files/"):
            return False
        served = self.files.get(handler.path[len("/files/"):].split("?")[0])
        if served is None:
            return False
        served.serve(handler)
        return True

    # ---- lifecycle ----
    @property
    def base_url(self) -> str:
        assert self._server is not None, "start() the mock first"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "CivitaiMock":
        mock = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep test output clean
                pass

            def _handle(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                with mock._lock:
                    mock.requests.append(Recorded(self.command, self.path, dict(self.headers.items()), body))
                reply = mock._scripted(self.command, self.path)
                if reply is None and mock._serve_file(self):  # downloads: Range, slow, truncated
                    return
                reply = reply or mock._route(self.command, self.path, body)
                if reply.delay:
                    time.sleep(reply.delay)
                data, ctype = reply.encoded()
                try:
                    self.send_response(reply.status)
                    self.send_header("Content-Type", ctype)
                    self.send_header("Content-Length", str(len(data)))
                    for k, v in reply.headers.items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout tests)

            do_GET = _handle
            do_POST = _handle

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        server.block_on_close = False
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=5)
            self._server = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # ---- routing ----
    def _scripted(self, method: str, path: str) -> Reply | None:
        with self._lock:
            for m, prefix, replies in self._scripts:
                if m == method and path.startswith(prefix) and replies:
                    return replies.pop(0)
        return None

    def _find_by_hash(self, h: str) -> dict | None:
        h = h.upper()
        for ver in self.versions:
            for f in ver.get("files", []):
                if h in (str(x).upper() for x in f.get("hashes", {}).values()):
                    return ver
        return None

    def _route(self, method: str, path: str, body: bytes) -> Reply:
        by_hash = "/api/v1/model-versions/by-hash"
        if method == "GET" and path.startswith(by_hash + "/"):
            ver = self._find_by_hash(path[len(by_hash) + 1:])
            if ver is None:
                return Reply(404, {"error": "Model not found"})
            return Reply(200, ver)
        if method == "POST" and path == by_hash:
            try:
                hashes = json.loads(body)
            except ValueError:
                return Reply(400, {"error": "invalid body"})
            if not isinstance(hashes, list):
                return Reply(400, {"error": "expected an array of hashes"})
            found = []
            for h in hashes:
                ver = self._find_by_hash(str(h))
                if ver is not None and ver not in found:
                    found.append(ver)
            return Reply(200, found)
        versions = "/api/v1/model-versions/"
        if method == "GET" and path.startswith(versions) and path[len(versions):].split("?")[0].isdigit():
            vid = int(path[len(versions):].split("?")[0])
            ver = next((v for v in self.versions if v.get("id") == vid), None)
            return Reply(200, ver) if ver is not None else Reply(404, {"error": f"No model version with id {vid}"})
        if method == "GET" and path.startswith("/api/download/models/"):
            vid = path[len("/api/download/models/"):].split("?")[0]
            name = self.download_names.get(int(vid)) if vid.isdigit() else None
            if name is None:
                return Reply(404, {"error": "Model not found"})
            # like Civitai: a redirect to a CDN on another host (the API key must not follow)
            return Reply(307, b"", headers={"Location": f"{self.cdn_url}/files/{name}"})
        if method == "GET" and "/resolve/" in path:
            name = self.hf_files.get(path.split("?")[0])
            if name is None:
                return Reply(404, "Entry not found", headers={"X-Error-Code": "EntryNotFound"})
            served = self.files[name]
            return Reply(302, b"", headers={"Location": f"{self.cdn_url}/files/{name}",
                                            "X-Linked-Etag": f'"{hashlib.sha256(served.content).hexdigest()}"',
                                            "X-Linked-Size": str(len(served.content))})
        if method == "GET" and path.startswith("/api/v1/models/"):
            tail = path[len("/api/v1/models/"):].split("?")[0]
            model = self.models.get(int(tail)) if tail.isdigit() else None
            if model is None:
                return Reply(404, {"error": "No model with id " + tail})
            return Reply(200, model)
        if method == "GET" and path.startswith("/images/"):
            item = self.images.get(path[len("/images/"):])
            if item is None:
                return Reply(404, "not found")
            return Reply(200, item[0], content_type=item[1])
        return Reply(404, {"error": "no route"})


@dataclass
class ServedFile:
    """A file the mock serves for downloads, with the ways real servers misbehave."""
    content: bytes
    ranges: bool = True                 # False: ignore Range, always 200 with the whole file
    chunk: int = 64 * 1024
    chunk_delay: float = 0.0            # seconds between chunks (a slow server)
    truncate_at: int | None = None      # close the connection after this many body bytes...
    truncate_times: int = 1             # ...for this many answers, then serve normally
    etag: str | None = None             # default: derived from the content (changes with it)
    content_type: str = "application/octet-stream"
    gate: threading.Event | None = None  # the body waits until this is set
    served: list = field(default_factory=list)  # (range header or None, status) per answer

    def current_etag(self) -> str:
        return self.etag or '"' + hashlib.md5(self.content).hexdigest() + '"'

    def serve(self, h) -> None:
        data = self.content
        start, status = 0, 200
        rng = h.headers.get("Range")
        if_range = h.headers.get("If-Range")
        if rng and self.ranges and (if_range is None or if_range == self.current_etag()):
            spec = rng.replace("bytes=", "").split("-")[0]
            start = int(spec) if spec.isdigit() else 0
            if start >= len(data):
                self.served.append((rng, 416))
                h.send_response(416)
                h.send_header("Content-Range", f"bytes */{len(data)}")
                h.send_header("Content-Length", "0")
                h.end_headers()
                return
            status = 206
        self.served.append((rng, status))
        body = data[start:]
        try:
            h.send_response(status)
            h.send_header("Content-Type", self.content_type)
            h.send_header("Content-Length", str(len(body)))
            h.send_header("ETag", self.current_etag())
            if self.ranges:
                h.send_header("Accept-Ranges", "bytes")
            if status == 206:
                h.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            h.end_headers()
            if h.command == "HEAD":
                return
            if self.gate is not None:
                self.gate.wait(30)
            limit = len(body)
            if self.truncate_at is not None and self.truncate_times > 0:
                self.truncate_times -= 1
                limit = max(0, self.truncate_at - start)
            sent = 0
            while sent < limit:
                piece = body[sent:min(limit, sent + self.chunk)]
                h.wfile.write(piece)
                sent += len(piece)
                if self.chunk_delay:
                    h.wfile.flush()
                    time.sleep(self.chunk_delay)
            if limit < len(body):
                h.wfile.flush()
                h.close_connection = True
                import socket as _socket

                h.connection.shutdown(_socket.SHUT_RDWR)
        except (BrokenPipeError, ConnectionResetError, OSError):
            pass  # the client paused, cancelled or timed out


def png_bytes(size=(8, 6), color=(200, 30, 30), fmt="PNG") -> bytes:
    """A small real image for preview tests."""
    import io

    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, format=fmt)
    return out.getvalue()


def closed_port_url() -> str:
    """A base URL on which nothing listens: connection refused, like an offline machine."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def new_client(base_url: str, tmp_path, sleeps: list | None = None, **kwargs):
    """A CivitaiClient for tests: no env API key, short timeout, waits recorded instead of slept."""
    from lora_core.library.civitai import CivitaiClient

    kwargs.setdefault("timeout", 5.0)
    kwargs.setdefault("use_env_key", False)
    kwargs.setdefault("data_dir", tmp_path / "data")
    record = sleeps if sleeps is not None else []
    return CivitaiClient(base_url, sleep=record.append, **kwargs)
