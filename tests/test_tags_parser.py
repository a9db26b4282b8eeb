"""Prompt tag parsing: A1111 positional/named semantics, cleanup, problems, merging, fuzz."""
import pytest
from hypothesis import given, settings, strategies as st

from lora_core.tags import BLOCK_IDS_26, parse_prompt


def one(text, **kw):
    parsed = parse_prompt(text, **kw)
    assert not parsed.problems, parsed.problems
    assert len(parsed.requests) == 1
    return parsed.requests[0]


@pytest.mark.parametrize("tag, te, unet, dyn", [
    ("<lora:x>", 1.0, 1.0, None),               # te defaults to 1
    ("<lora:x:0.7>", 0.7, 0.7, None),           # unet defaults to te
    ("<lora:x:0.7:0.2>", 0.7, 0.2, None),
    ("<lora:x:0.7:0.2:8>", 0.7, 0.2, 8),
    ("<lora:x:te=0.3>", 0.3, 0.3, None),        # named te also feeds the unet default
    ("<lora:x:unet=0.4>", 1.0, 0.4, None),
    ("<lora:x:dyn=16:0.5>", 0.5, 0.5, 16),      # named anywhere, positional order unaffected
    ("<lora:x:0.5:te=0.9>", 0.9, 0.9, None),    # named overrides positional
    ("<lora:x:0.5:0.6:unet=0.1:te=0.2>", 0.2, 0.1, None),
    ("<lyco:x:0.5>", 0.5, 0.5, None),
    ("<lora:x: 0.5 >", 0.5, 0.5, None),
])
def test_a1111_weight_semantics(tag, te, unet, dyn):
    req = one(f"a cat {tag} on a mat")
    assert (req.name, req.te, req.unet, req.dyn) == ("x", te, unet, dyn)
    assert req.source == tag


def test_lyco_kind_and_folder_names():
    req = one(r"<lyco:chars\hero:0.5>")
    assert req.kind == "lyco" and req.name == "chars/hero"
    assert one("<lora:styles/ink/brush:1>").name == "styles/ink/brush"


def test_tags_removed_and_whitespace_tidied():
    parsed = parse_prompt("a  cat, <lora:x:0.5>  <hypernet:h:1> on a mat <lora:y>\n  second line ")
    assert parsed.clean_text == "a cat, on a mat\nsecond line"
    assert [r.name for r in parsed.requests] == ["x", "y"]
    assert any("hypernet" in w for w in parsed.warnings)  # removed like A1111, but said so


def test_no_tags_keeps_text():
    assert parse_prompt("just (words:1.2), [a|b]").clean_text == "just (words:1.2), [a|b]"
    assert parse_prompt("").requests == []


@pytest.mark.parametrize("tag, fragment", [
    ("<lora:>", "empty tag"),
    ("<lora::0.5>", "no LoRA name"),
    ("<lora:x:abc>", "te weight 'abc' is not a number"),
    ("<lora:x:1:zz>", "unet weight 'zz' is not a number"),
    ("<lora:x:1:1:2.5>", "dyn '2.5' is not a whole number"),
    ("<lora:x:1:1:0>", "dyn must be at least 1"),
    ("<lora:x:te=nan>", "not a finite number"),
    ("<lora:x:lbw=1,2,3>", "3 values"),
    ("<lora:x:lbw=FOO>", "unknown preset 'FOO'"),
    ("<lora:x:lbw=R,1,1,1,1,1,1,1,1,1,1,1>", "random value"),
])
def test_malformed_tags_are_problems_naming_the_tag(tag, fragment):
    parsed = parse_prompt(f"cat {tag} dog")
    assert parsed.requests == []
    assert len(parsed.problems) == 1
    assert tag in parsed.problems[0] and fragment in parsed.problems[0]
    assert parsed.clean_text == "cat dog"


def test_unclosed_tag_is_a_problem_and_other_tags_still_work():
    parsed = parse_prompt("cat <lora:broken:0.5 and <lora:good:0.4>")
    assert [r.name for r in parsed.requests] == ["good"]
    assert len(parsed.problems) == 1 and "<lora:broken:0.5" in parsed.problems[0] and "not closed" in parsed.problems[0]


@pytest.mark.parametrize("tag, bad", [("<lora:x:1.6>", True), ("<lora:x:-0.2>", True), ("<lora:x:1.5>", False),
                                      ("<lora:x:0>", False), ("<lora:x:1:2>", True)])
def test_weights_outside_range_warn(tag, bad):
    parsed = parse_prompt(tag)
    assert len(parsed.requests) == 1
    assert bool([w for w in parsed.warnings if "outside 0..1.5" in w]) is bad


def test_same_lora_twice_adds_te_and_unet_separately():
    parsed = parse_prompt("<lora:a:0.5:0.25> x <lora:b:1> <lora:a:0.3:0.5>")
    assert [r.name for r in parsed.requests] == ["a", "b"]
    a = parsed.requests[0]
    assert a.te == pytest.approx(0.8) and a.unet == pytest.approx(0.75)
    assert any("more than once" in w for w in parsed.warnings)


def test_same_lora_twice_with_block_weights_keeps_effective_multipliers():
    parsed = parse_prompt("<lora:a:0.5:lbw=INS> <lora:a:0.5>")
    a = parsed.requests[0]
    ins = dict(zip(BLOCK_IDS_26, one("<lora:a:1:lbw=INS>").lbw))
    for i, block in enumerate(BLOCK_IDS_26):
        expected = 0.5 * ins[block] + 0.5 * 1.0
        assert a.unet * a.lbw[i] == pytest.approx(expected) if i else a.te * a.lbw[0] == pytest.approx(expected)


def test_cancelling_weights_with_block_weights_stay_exact():
    a = parse_prompt("<lora:a:1:lbw=OUTS> <lora:a:-1>").requests[0]
    outs = dict(zip(BLOCK_IDS_26, one("<lora:a:1:lbw=OUTS>").lbw))
    assert (a.te, a.unet) == (1.0, 1.0)
    assert a.lbw[BLOCK_IDS_26.index("OUT11")] == pytest.approx(outs["OUT11"] - 1)
    assert a.lbw[BLOCK_IDS_26.index("IN01")] == pytest.approx(-1)


def test_unknown_and_unsupported_options_warn_but_apply():
    parsed = parse_prompt("<lora:x:0.5:stop=10:foo=1>")
    assert parsed.requests[0].te == 0.5
    assert any("stop=" in w for w in parsed.warnings) and any("foo=" in w for w in parsed.warnings)


def test_too_many_positional_values_warn():
    parsed = parse_prompt("<lora:x:1:1:4:9>")
    assert parsed.requests[0].dyn == 4 and any("extra positional" in w for w in parsed.warnings)


def test_non_string_input_does_not_raise():
    assert parse_prompt(None).clean_text == ""


_alphabet = st.sampled_from(list("<>:=,.-/\\ \n\t0123456789eEabxlorayc_") + ["<lora:", "<lyco:", "lbw=", "te=",
                                                                          "unet=", "dyn=", "ALL", "INS", "X", "x=", "é", "\x00"])


@settings(max_examples=300, deadline=None)
@given(st.lists(_alphabet, max_size=60).map("".join))
def test_fuzz_parser_never_raises(text):
    parsed = parse_prompt(text)
    assert isinstance(parsed.clean_text, str)
    for req in parsed.requests:
        assert req.name and isinstance(req.te, float) and isinstance(req.unet, float)
        assert req.lbw is None or len(req.lbw) == 26
    # every lora tag yields a request, a problem, or is merged into a request
    assert "<lora:" not in parsed.clean_text or parsed.problems


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=80))
def test_fuzz_parser_any_unicode(text):
    parse_prompt(text)
    parse_prompt(f"<lora:{text}>", family="sdxl")


def test_same_lora_twice_with_a_flux_vector_keeps_all_61_values():
    """A Flux block-weight vector is 61 values (CLIP, T5, IN, D00..D18, S00..S37, OUT): merging two
    tags of one LoRA must keep every value, with CLIP and T5 scaled like the text encoder."""
    from lora_core.tags.block_weights import FLUX_BLOCK_IDS

    vec = ",".join(["0.5", "0"] + ["1"] * 58 + ["0.25"])
    a = parse_prompt(f"<lora:a:2:lbw={vec}> <lora:a:1>", family="flux").requests[0]
    assert len(a.lbw) == len(FLUX_BLOCK_IDS) == 61
    assert a.te * a.lbw[0] == pytest.approx(2 * 0.5 + 1)       # CLIP
    assert a.te * a.lbw[1] == pytest.approx(2 * 0 + 1)         # T5
    assert a.unet * a.lbw[30] == pytest.approx(2 * 1 + 1)      # a single block
    assert a.unet * a.lbw[60] == pytest.approx(2 * 0.25 + 1)   # OUT
