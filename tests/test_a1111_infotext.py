"""The `Lora hashes` field: A1111's format both ways, and untrusted pasted text."""
from hypothesis import given
from hypothesis import strategies as st

from lora_core.a1111 import infotext


def test_format_matches_a1111():
    text = infotext.format_hashes([("my:lora,v2", "0123456789ab"), ("b", "ba9876543210"), ("c", None)])
    assert text == "mylorav2: 0123456789ab, b: ba9876543210"


def test_format_skips_duplicates_and_empties():
    assert infotext.format_hashes([("a", "0123456789ab"), ("a", "ffffffffffff"), ("", "0123456789ab")]) == \
        "a: 0123456789ab"


def test_parse_is_the_inverse_and_skips_junk():
    assert infotext.parse_hashes("a: 0123456789AB,  b c: ba9876543210") == {"a": "0123456789ab", "b c": "ba9876543210"}
    assert infotext.parse_hashes("no colon, x: not-hex, : 0123456789ab, y:") == {}
    assert infotext.parse_hashes(None) == {}
    assert infotext.parse_hashes(12) == {}


def test_rewrite_only_names_with_a_known_hash():
    hashes = {"old": "0123456789ab", "gone": "ffffffffffff"}
    local = {"0123456789ab": "new/name"}
    prompt = "x <lora:old:0.7> <LYCO:old> <lora:gone:1> <lora:other:1> <lora:old"
    out = infotext.rewrite_prompt(prompt, hashes, local.get)
    assert out == "x <lora:new/name:0.7> <LYCO:new/name> <lora:gone:1> <lora:other:1> <lora:old"


@given(st.text(max_size=200), st.text(max_size=200))
def test_never_raises_on_any_text(prompt, field):
    hashes = infotext.parse_hashes(field)
    out = infotext.rewrite_prompt(prompt, hashes, lambda h: "local")
    assert isinstance(out, str)
    if not hashes:
        assert out == prompt


@given(st.lists(st.tuples(st.text(alphabet=st.characters(blacklist_characters=":,"), min_size=1, max_size=20),
                          st.text(alphabet="0123456789abcdef", min_size=12, max_size=12)), max_size=5))
def test_round_trip(pairs):
    parsed = infotext.parse_hashes(infotext.format_hashes(pairs))
    expected = {}
    for name, short in pairs:
        if name.strip():
            expected.setdefault(name.strip(), short)
    assert parsed == expected
