"""The Hugging Face token comes from where huggingface_hub keeps it (env, then the token file that
`hf auth login` writes), and reaches Hugging Face requests only."""
import logging

from tests.download_fixture import env, lora_bytes, mock  # noqa: F401 - fixtures
from lora_core.library.hf_token import hf_token, token_file

CONTENT = lora_bytes(2)


def test_environment_first_then_the_older_name(tmp_path):
    (tmp_path / "token").write_text("hf_fromfile\n")
    base = {"HF_HOME": str(tmp_path)}
    assert hf_token({**base, "HF_TOKEN": " hf_env ", "HUGGING_FACE_HUB_TOKEN": "hf_old"}) == "hf_env"
    assert hf_token({**base, "HUGGING_FACE_HUB_TOKEN": "hf_old"}) == "hf_old"
    assert hf_token({**base, "HF_TOKEN": ""}) == "hf_fromfile"


def test_token_file_locations(tmp_path):
    assert token_file({"HF_TOKEN_PATH": str(tmp_path / "t")}) == tmp_path / "t"
    assert token_file({"HF_HOME": str(tmp_path)}) == tmp_path / "token"
    assert token_file({"XDG_CACHE_HOME": str(tmp_path)}) == tmp_path / "huggingface" / "token"
    assert token_file({"HF_TOKEN_PATH": str(tmp_path / "t"), "HF_HOME": "/elsewhere"}) == tmp_path / "t"
    (tmp_path / "huggingface").mkdir()
    (tmp_path / "huggingface" / "token").write_text("hf_xdg")
    assert hf_token({"XDG_CACHE_HOME": str(tmp_path)}) == "hf_xdg"


def test_no_token_and_bad_token_files_give_none(tmp_path, caplog):
    assert hf_token({"HF_TOKEN_PATH": str(tmp_path / "missing")}) is None
    big = tmp_path / "big"
    big.write_bytes(b"x" * 10_000)
    spaced = tmp_path / "spaced"
    spaced.write_text("two words\n")
    folder = tmp_path / "folder"
    folder.mkdir()
    with caplog.at_level(logging.WARNING):
        assert hf_token({"HF_TOKEN_PATH": str(big)}) is None
        assert hf_token({"HF_TOKEN_PATH": str(spaced)}) is None
        assert hf_token({"HF_TOKEN_PATH": str(folder)}) is None
    assert str(big) in caplog.text and str(spaced) in caplog.text
    assert "two words" not in caplog.text  # never log what might be a secret


def test_saved_token_is_sent_to_hugging_face_not_to_the_cdn(env, tmp_path, monkeypatch):
    token_path = tmp_path / "hf-token"
    token_path.write_text("hf_saved_by_login\n")
    monkeypatch.setenv("HF_TOKEN_PATH", str(token_path))
    m = env.mock
    url = m.add_hf_file("o/r", "tok.safetensors", CONTENT)
    job = env.run(url)
    assert job["state"] == "done", job
    hf = [r for r in m.requests if "/resolve/" in r.path]
    assert hf and all(r.headers.get("Authorization") == "Bearer hf_saved_by_login" for r in hf)
    others = [r for r in m.requests if "/resolve/" not in r.path]
    assert all("Authorization" not in r.headers for r in others)
