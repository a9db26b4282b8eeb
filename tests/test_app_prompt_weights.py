"""A1111's prompt syntax in the standalone app: (emphasis), [de-emphasis], (text:1.3), escapes,
BREAK, and prompts longer than 75 tokens encoded chunk by chunk instead of cut."""
from __future__ import annotations

import pytest

from lora_core.app.prompt_syntax import parse_prompt


def _pieces(text):
    return [(p.text, round(p.weight, 6)) for p in parse_prompt(text) if not p.is_break]


# The examples A1111 documents for its parser (modules/prompt_parser.py, parse_prompt_attention).
@pytest.mark.parametrize("text, expected", [
    ("normal text", [("normal text", 1.0)]),
    ("an (important) word", [("an ", 1.0), ("important", 1.1), (" word", 1.0)]),
    ("(unbalanced", [("unbalanced", 1.1)]),
    ("\\(literal\\]", [("(literal]", 1.0)]),
    ("(unnecessary)(parens)", [("unnecessaryparens", 1.1)]),
    ("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
     [("a ", 1.0), ("house", 1.573), (" ", 1.1), ("on", 1.0), (" a ", 1.1), ("hill", 0.55), (", sun, ", 1.1),
      ("sky", 1.4641), (".", 1.1)]),
])
def test_emphasis_is_read_as_a1111_reads_it(text, expected):
    assert _pieces(text) == expected


def test_break_separates_and_odd_text_stays_text():
    pieces = parse_prompt("cat, BREAK dog")
    assert [p.is_break for p in pieces] == [False, True, False]
    assert _pieces("aBREAK b") == [("aBREAK b", 1.0)]  # only a word of its own
    assert _pieces("x:y (z:abc) ]") == [("x:y ", 1.0), ("z:abc", 1.1), (" ]", 1.0)]
    assert _pieces("[b:2]") == [("b:2", round(1 / 1.1, 6))]  # the weight form is for round brackets


@pytest.fixture(scope="module")
def sd1(tmp_path_factory):
    import os

    from lora_core.app.pipeline import PipelineHandle
    from tests.app_pipeline.tiny_ldm import write_checkpoint

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    tmp = tmp_path_factory.mktemp("sd1")
    path, config_root, _ = write_checkpoint(tmp, "sd1")
    return PipelineHandle.load(path, data_dir=tmp / "data", config_root=config_root)


def _words(n):
    """n words that are one CLIP token each"""
    return " ".join(("cat", "dog", "red", "sun")[i % 4] for i in range(n))


def test_chunks_break_at_75_tokens_at_break_and_near_a_comma(sd1):
    from lora_core.app.prompt_encode import token_chunks

    tok = sd1.pipe.tokenizer
    assert len(tok(_words(100), add_special_tokens=False).input_ids) == 100
    assert [len(c.ids) for c in token_chunks(tok, _words(100))] == [75, 25]
    assert [len(c.ids) for c in token_chunks(tok, "a cat BREAK a dog")] == [2, 2]
    # a comma 5 tokens before the limit: the chunk ends at the comma, the phrase moves on whole
    prompt = " ".join(["cat"] * 70) + ", " + " ".join(["dog"] * 10)
    chunks = token_chunks(tok, prompt)
    assert len(chunks[0].ids) == 71 and tok.decode(chunks[0].ids[-1:]).strip() == ","
    assert len(chunks[1].ids) == 10


def test_plain_prompts_keep_diffusers_path_and_unit_weights_match_it(sd1):
    import torch

    from lora_core.app.pipeline import GenerationParams
    from lora_core.app.prompt_encode import weighted_embeddings

    plain = GenerationParams(prompt="a red cat", negative="blurry")
    assert sd1._text_arguments(plain) == {"prompt": "a red cat", "negative_prompt": "blurry"}
    assert "prompt_embeds" in sd1._text_arguments(GenerationParams(prompt="a (red:1.2) cat"))
    with torch.no_grad():
        ours = weighted_embeddings(sd1.pipe, "sd1", "a (red:1) cat", "blurry")
        theirs, theirs_neg = sd1.pipe.encode_prompt("a red cat", "cpu", 1, True, "blurry")
    assert torch.allclose(ours["prompt_embeds"], theirs, atol=1e-6)
    assert torch.allclose(ours["negative_prompt_embeds"], theirs_neg, atol=1e-6)


def test_weights_scale_their_tokens_and_long_prompts_keep_every_chunk(sd1):
    import torch

    from lora_core.app.prompt_encode import weighted_embeddings

    with torch.no_grad():
        base = weighted_embeddings(sd1.pipe, "sd1", "a (red:1) cat", "")["prompt_embeds"]
        up = weighted_embeddings(sd1.pipe, "sd1", "a (red:1.5) cat", "")["prompt_embeds"]
        # token 2 is "red": scaled 1.5x, then the whole chunk rescaled by one common factor
        ratio = up / base
        common = ratio[0, 1].mean()
        assert torch.allclose(ratio[0, 2], 1.5 * common, rtol=1e-4)
        assert torch.allclose(ratio[0, [0, 1, 3, 10]], common.expand(4, ratio.shape[-1]), rtol=1e-4)
        # A1111 keeps the chunk's mean; CLIP's final layer norm puts that mean near 0, so the
        # tolerance is float rounding at the scale of the embeddings, not relative to the mean
        scale = base.abs().mean()
        assert torch.isclose(up.mean(), base.mean(), rtol=0, atol=1e-5 * scale)

        kw = weighted_embeddings(sd1.pipe, "sd1", _words(100), "blurry")
        first = weighted_embeddings(sd1.pipe, "sd1", "(" + _words(75) + ":1)", "")["prompt_embeds"]
    assert kw["prompt_embeds"].shape[1] == 2 * 77 == kw["negative_prompt_embeds"].shape[1]
    assert torch.allclose(kw["prompt_embeds"][:, :77], first, atol=1e-6)  # chunk 1: the first 75 words


def test_long_and_weighted_prompts_generate(sd1):
    import numpy as np

    from lora_core.app.pipeline import GenerationParams

    def image(prompt):
        p = GenerationParams(prompt=prompt, steps=2, seed=3, width=64, height=64, sampler="Euler")
        return np.asarray(sd1.generate(p)[0], dtype=np.int16)

    cut = image(_words(75))
    longer = image(_words(75) + " BREAK " + "red " * 20)
    assert cut.shape == longer.shape == (64, 64, 3)
    assert np.abs(cut - longer).mean() > 0, "the words after the first 75 tokens count"
    assert np.array_equal(image("a cat"), image("a cat"))
    assert not np.array_equal(image("a (cat:1.6)"), image("a cat"))


def test_sdxl_pooled_output_and_zero_negative(tmp_path):
    import os

    import torch

    from lora_core.app.pipeline import PipelineHandle
    from lora_core.app.prompt_encode import weighted_embeddings
    from tests.app_pipeline.tiny_ldm import write_checkpoint

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    path, config_root, _ = write_checkpoint(tmp_path, "sdxl")
    xl = PipelineHandle.load(path, data_dir=tmp_path / "data", config_root=config_root)
    with torch.no_grad():
        ours = weighted_embeddings(xl.pipe, "sdxl", "a (red:1) cat", "")
        emb, neg, pooled, neg_pooled = xl.pipe.encode_prompt("a red cat", device="cpu", num_images_per_prompt=1,
                                                             do_classifier_free_guidance=True)
        long = weighted_embeddings(xl.pipe, "sdxl", _words(100), "")
    assert torch.allclose(ours["prompt_embeds"], emb, atol=1e-5)
    assert torch.allclose(ours["pooled_prompt_embeds"], pooled, atol=1e-5)
    assert torch.equal(ours["negative_prompt_embeds"], neg) and torch.equal(ours["negative_pooled_prompt_embeds"], neg_pooled)
    assert long["prompt_embeds"].shape[1] == 154 and long["pooled_prompt_embeds"].shape == pooled.shape
