"""What a user pastes -> which file to download: Civitai links, AIRs and ids, Hugging Face file URLs.

    parse_source(text, civitai_base, hf_base) -> CivitaiRef | HfRef     # no network; ValueError if unknown
    resolve(ref, http, civitai_base) -> Plan                            # Civitai: one or two API calls

Accepted (Civitai hosts: civitai.com, www.civitai.com, civitai.green and the configured base URL):
    https://civitai.com/models/123[/slug][?modelVersionId=456]
    https://civitai.com/api/download/models/456            (a model version's download link)
    https://civitai.com/api/v1/model-versions/456, https://civitai.com/model-versions/456
    urn:air:sdxl:lora:civitai:123@456, civitai:123@456, 123@456, 123 (a model id: its newest version)
    https://huggingface.co/<owner>/<repo>/resolve/<rev>/<path>  (or /blob/: the same file)

Civitai's answers are untrusted: the file name is reduced to a base name with a LoRA extension,
the hash must look like a SHA256, the download URL must be http(s).
"""
from __future__ import annotations

import os
import re
import urllib.parse
from dataclasses import dataclass, field

from .civitai_http import CivitaiHttpError, HttpClient, decode_json, short_url
from .civitai_parse import CivitaiShapeError, normalize_hash, parse_version

LORA_EXTENSIONS = (".safetensors", ".pt", ".ckpt")
CIVITAI_HOSTS = frozenset({"civitai.com", "www.civitai.com", "civitai.green", "www.civitai.green"})
HF_HOSTS = frozenset({"huggingface.co", "www.huggingface.co", "hf.co"})
_AIR = re.compile(r"^(?:urn:air:[\w.-]+:[\w.-]+:)?civitai:(\d+)(?:@(\d+))?$", re.I)
_IDS = re.compile(r"^(\d+)(?:@(\d+))?$")
_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")


class SourceError(ValueError):
    """The text or the server's answer does not name a downloadable LoRA file (message says why)."""


@dataclass(frozen=True)
class CivitaiRef:
    model_id: int | None
    version_id: int | None


@dataclass(frozen=True)
class HfRef:
    url: str  # the /resolve/ URL
    repo: str
    revision: str
    path: str


@dataclass
class Plan:
    """One file to fetch and what to write next to it."""
    url: str
    file_name: str
    sha256: str | None = None          # upper-case hex, when the source publishes it
    size: int | None = None            # bytes, when known beforehand (Civitai gives KB: approximate)
    source: str = ""                   # "civitai" | "huggingface"
    version_json: dict | None = None   # Civitai's model-version JSON (-> .civitai.info)
    trained_words: list = field(default_factory=list)
    label: str = ""                    # "Model name / version" for the queue view


def _host_port(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return (parts.netloc or "").lower()


def parse_source(text: str, civitai_base: str = "https://civitai.com", hf_base: str = "https://huggingface.co"):
    """CivitaiRef or HfRef for a pasted link/id. Raises SourceError naming what was not understood."""
    raw = (text or "").strip()
    if not raw:
        raise SourceError("nothing to download: paste a Civitai or Hugging Face link, an AIR or a model id")
    m = _AIR.match(raw) or _IDS.match(raw)
    if m:
        first, second = int(m.group(1)), m.group(2)
        return CivitaiRef(first, int(second) if second else None)
    parts = urllib.parse.urlsplit(raw if "://" in raw else "https://" + raw)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SourceError(f"not a link: {raw[:200]!r}")
    host, netloc = parts.hostname.lower(), parts.netloc.lower()
    segs = [urllib.parse.unquote(s) for s in parts.path.split("/") if s]
    is_hf = host in HF_HOSTS or netloc == _host_port(hf_base)
    is_civitai = host in CIVITAI_HOSTS or netloc == _host_port(civitai_base)
    if is_hf and (not is_civitai or "resolve" in segs or "blob" in segs):  # one mirror may serve both
        return _hf_ref(parts, segs, raw)
    if is_civitai:
        return _civitai_ref(segs, urllib.parse.parse_qs(parts.query), raw)
    raise SourceError(f"unsupported site {host}: paste a civitai.com or huggingface.co link")


def _civitai_ref(segs: list[str], query: dict, raw: str) -> CivitaiRef:
    version = query.get("modelVersionId", [None])[0]
    version_id = int(version) if version and version.isdigit() else None
    if len(segs) >= 2 and segs[0] == "models" and segs[1].isdigit():
        return CivitaiRef(int(segs[1]), version_id)
    if segs[:3] == ["api", "download", "models"] and len(segs) >= 4 and segs[3].isdigit():
        return CivitaiRef(None, int(segs[3]))
    for prefix in (["api", "v1", "model-versions"], ["model-versions"]):
        n = len(prefix)
        if segs[:n] == prefix and len(segs) > n and segs[n].isdigit():
            return CivitaiRef(None, int(segs[n]))
    if segs[:3] == ["api", "v1", "models"] and len(segs) >= 4 and segs[3].isdigit():
        return CivitaiRef(int(segs[3]), version_id)
    raise SourceError(f"not a Civitai model or model-version link: {short_url(raw)}")


def _hf_ref(parts, segs: list[str], raw: str) -> HfRef:
    # <owner>/<repo>/(resolve|blob)/<rev>/<path...>; datasets/spaces have a prefix segment
    offset = 1 if segs and segs[0] in ("datasets", "spaces") else 0
    s = segs[offset:]
    if len(s) < 5 or s[2] not in ("resolve", "blob"):
        raise SourceError(f"not a Hugging Face file link (…/resolve/<revision>/<file>): {short_url(raw)}")
    repo, rev, path = "/".join(segs[:offset + 2]), s[3], "/".join(s[4:])
    quoted = "/".join(urllib.parse.quote(p) for p in [*segs[:offset + 2], "resolve", rev, *s[4:]])
    url = urllib.parse.urlunsplit((parts.scheme, parts.netloc, "/" + quoted, "", ""))
    return HfRef(url=url, repo=repo, revision=rev, path=path)


def safe_file_name(name: object, where: str) -> str:
    """A LoRA file name from an untrusted answer: base name only, no hidden file, LoRA extension."""
    if not isinstance(name, str) or not name.strip():
        raise SourceError(f"{where}: no file name")
    base = os.path.basename(name.replace("\\", "/")).strip()
    base = "".join(ch for ch in base if ch >= " " and ch not in '<>:"|?*')
    base = base.lstrip(".").strip()
    if not base or len(base) > 200:
        raise SourceError(f"{where}: unusable file name {name[:100]!r}")
    if os.path.splitext(base)[1].lower() not in LORA_EXTENSIONS:
        raise SourceError(f"{where}: {base!r} is not a LoRA file (.safetensors, .pt, .ckpt)")
    return base


def resolve(ref, http: HttpClient, civitai_base: str = "https://civitai.com") -> Plan:
    """The file a reference means. Raises SourceError or CivitaiHttpError with a clear message."""
    if isinstance(ref, HfRef):
        return Plan(url=ref.url, file_name=safe_file_name(ref.path, ref.url), source="huggingface",
                    label=f"{ref.repo}: {ref.path}")
    base = civitai_base.rstrip("/")
    if ref.version_id is not None:
        version = _get_json(http, f"{base}/api/v1/model-versions/{ref.version_id}",
                            f"Civitai model version {ref.version_id}")
    else:
        model = _get_json(http, f"{base}/api/v1/models/{ref.model_id}", f"Civitai model {ref.model_id}")
        version = _newest_version(model, ref.model_id)
    return plan_from_version(version, base)


def _get_json(http: HttpClient, url: str, what: str) -> dict:
    resp = http.request("GET", url)
    if resp.status == 404:
        raise CivitaiHttpError("http", f"{what} not found (HTTP 404): check the link or id", 404)
    data = decode_json(resp)
    if not isinstance(data, dict):
        raise SourceError(f"{what}: unexpected answer from Civitai")
    return data


def _newest_version(model: dict, model_id: int) -> dict:
    versions = model.get("modelVersions")
    if not isinstance(versions, list) or not any(isinstance(v, dict) for v in versions):
        raise SourceError(f"Civitai model {model_id} has no downloadable version")
    published = [v for v in versions if isinstance(v, dict) and v.get("status", "Published") == "Published"]
    version = dict((published or [v for v in versions if isinstance(v, dict)])[0])  # Civitai lists newest first
    version.setdefault("modelId", model.get("id", model_id))
    if not isinstance(version.get("model"), dict):
        version["model"] = {k: model.get(k) for k in ("name", "type", "nsfw", "poi") if k in model}
    return version


def plan_from_version(version: dict, base_url: str) -> Plan:
    vid = version.get("id")
    where = f"Civitai model version {vid}"
    try:
        parsed = parse_version(version, base_url)
    except CivitaiShapeError as exc:
        raise SourceError(f"{where}: unexpected answer from Civitai: {exc}") from None
    files = [f for f in version.get("files") or [] if isinstance(f, dict)]
    models = [f for f in files if f.get("type", "Model") == "Model"] or files
    if not models:
        raise SourceError(f"{where} has no file to download")
    chosen = next((f for f in models if f.get("primary") is True), models[0])
    url = chosen.get("downloadUrl") or version.get("downloadUrl")
    if not isinstance(url, str) or urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        raise SourceError(f"{where}: no http(s) download link")
    hashes = chosen.get("hashes") if isinstance(chosen.get("hashes"), dict) else {}
    sha = hashes.get("SHA256")
    sha = normalize_hash(sha) if isinstance(sha, str) and _SHA256.match(sha.strip()) else None
    size_kb = chosen.get("sizeKB")
    size = int(size_kb * 1024) if isinstance(size_kb, (int, float)) and not isinstance(size_kb, bool) else None
    model_name = parsed.model_name if hasattr(parsed, "model_name") else ""
    label = " / ".join(x for x in (model_name, parsed.name if hasattr(parsed, "name") else "") if x)
    return Plan(url=url, file_name=safe_file_name(chosen.get("name"), where), sha256=sha, size=size,
                source="civitai", version_json=version, trained_words=list(parsed.trained_words),
                label=label or where)
