"""Pasted text -> what to download (no network)."""
from __future__ import annotations

import pytest

from lora_core.library.download_sources import CivitaiRef, HfRef, SourceError, parse_source, plan_from_version, safe_file_name
from tests.civitai_mock import make_version


@pytest.mark.parametrize("text,ref", [
    ("https://civitai.com/models/123", CivitaiRef(123, None)),
    ("https://civitai.com/models/123/some-name?modelVersionId=456", CivitaiRef(123, 456)),
    ("civitai.com/models/123?modelVersionId=456&x=1", CivitaiRef(123, 456)),
    ("https://www.civitai.com/api/download/models/456?type=Model&format=SafeTensor", CivitaiRef(None, 456)),
    ("https://civitai.com/api/v1/model-versions/456", CivitaiRef(None, 456)),
    ("https://civitai.green/model-versions/456", CivitaiRef(None, 456)),
    ("urn:air:sdxl:lora:civitai:123@456", CivitaiRef(123, 456)),
    ("URN:AIR:SD1:LORA:CIVITAI:123@456", CivitaiRef(123, 456)),
    ("civitai:123", CivitaiRef(123, None)),
    ("  123  ", CivitaiRef(123, None)),
    ("123@456", CivitaiRef(123, 456)),
    ("http://127.0.0.1:9999/models/7", CivitaiRef(7, None)),  # the configured base URL
])
def test_civitai_forms(text, ref):
    assert parse_source(text, civitai_base="http://127.0.0.1:9999") == ref


def test_hugging_face_blob_and_resolve_are_the_same_file():
    blob = parse_source("https://huggingface.co/owner/repo/blob/main/loras/my%20style.safetensors")
    resolve = parse_source("https://huggingface.co/owner/repo/resolve/main/loras/my style.safetensors?download=true")
    assert isinstance(blob, HfRef) and blob == resolve
    assert blob.url == "https://huggingface.co/owner/repo/resolve/main/loras/my%20style.safetensors"
    assert (blob.repo, blob.revision, blob.path) == ("owner/repo", "main", "loras/my style.safetensors")
    ds = parse_source("https://huggingface.co/datasets/o/d/resolve/v1/a.safetensors")
    assert ds.repo == "datasets/o/d" and ds.url.endswith("/datasets/o/d/resolve/v1/a.safetensors")


@pytest.mark.parametrize("name,expected", [
    ("a.safetensors", "a.safetensors"), ("../../x.safetensors", "x.safetensors"),
    ("..\\..\\w.pt", "w.pt"), (".hidden.ckpt", "hidden.ckpt"), ('bad<>:"|?*.safetensors', "bad.safetensors"),
])
def test_file_names_from_answers_are_made_safe(name, expected):
    assert safe_file_name(name, "t") == expected


@pytest.mark.parametrize("name", [None, "", "   ", "x.exe", "x.safetensors.zip", "..", 42])
def test_unusable_file_names(name):
    with pytest.raises(SourceError):
        safe_file_name(name, "t")


def test_plan_prefers_the_primary_model_file_and_its_sha256():
    v = make_version(5, 6, b"content", file_name="main.safetensors")
    extra = dict(v["files"][0], name="training_data.zip", type="Training Data", primary=False)
    v["files"].insert(0, extra)
    plan = plan_from_version(v, "https://civitai.com")
    assert plan.file_name == "main.safetensors" and plan.sha256 == v["files"][1]["hashes"]["SHA256"]
    assert plan.trained_words == ["trigger word"] and plan.label == "Test LoRA / v1.0"
    v["files"][1]["hashes"]["SHA256"] = "not-a-hash"
    assert plan_from_version(v, "https://civitai.com").sha256 is None
    v["files"][1]["downloadUrl"] = "file:///etc/passwd"
    v["downloadUrl"] = None
    with pytest.raises(SourceError, match="no http"):
        plan_from_version(v, "https://civitai.com")
