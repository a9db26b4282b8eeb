"""The standalone's Civitai flags and its matched-module callback (real engine, tiny model)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from lora_core.app import serve


def _args(*argv):
    parser = argparse.ArgumentParser()
    serve.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_civitai_flags(monkeypatch):
    monkeypatch.delenv("CIVITAI_API_KEY", raising=False)
    s = serve.civitai_settings_from_args(_args())
    assert (s.base_url, s.api_key, s.nsfw_threshold, s.enabled) == ("https://civitai.com", None, "PG13", True)
    monkeypatch.setenv("CIVITAI_API_KEY", "from-env")
    assert serve.civitai_settings_from_args(_args()).api_key == "from-env"
    s = serve.civitai_settings_from_args(_args("--civitai-url", "http://127.0.0.1:9", "--civitai-key", "k",
                                               "--nsfw-threshold", "show all", "--no-civitai"))
    assert (s.base_url, s.api_key, s.preview_limit(), s.enabled) == ("http://127.0.0.1:9", "k", None, False)
    with pytest.raises(SystemExit):
        _args("--nsfw-threshold", "spicy")


def test_match_counts_through_the_session_engine(tmp_path):
    pytest.importorskip("torch")  # the engine side needs it; the UI side does not
    sys.path.insert(0, str(Path(__file__).parent / "patcher"))
    from engine_makers import base_models, make_lora

    from lora_core.engine import Engine
    from lora_core.targets import Binding

    unet, te = base_models()
    engine = Engine(Binding.from_diffusers(unet, [te]))
    full = make_lora(tmp_path, "full", seed=1)
    unet_only = make_lora(tmp_path, "unet_only", seed=2, with_te=False)
    session = SimpleNamespace(engine=engine)
    matched, unmatched = serve.session_match_counts(session, full)
    assert matched > 0 and unmatched == 0
    m2, u2 = serve.session_match_counts(session, unet_only)
    assert 0 < m2 < matched and u2 == 0
    assert engine.cache.get(full) is engine.cache.get(full), "read once, through the engine's cache"
    assert serve.session_match_counts(SimpleNamespace(engine=None), full) is None
