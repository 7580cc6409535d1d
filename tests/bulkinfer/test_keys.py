import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bulkinfer.keys import normalize_key


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("Covid Vaccine", "covid vaccine"),
        ("  cheap   FLIGHTS ", "cheap flights"),
        ("ＣＯＶＩＤ\u3000ｖａｃｃｉｎｅ", "covid vaccine"),  # full-width letters and space
        ("Straße", "strasse"),  # full case folding
        ("ﬁsh", "fish"),  # ligature
        ("a\x00b\tc\u200bd", "ab cd"),  # NUL dropped, tab is whitespace, zero-width space dropped
        ("line\none", "line one"),
        ("\x07\x08", ""),
        ("", ""),
        ("ΚΑΛΗΜΕΡΑ", "καλημερα"),
        ("КРОССОВКИ", "кроссовки"),
        ("कोविड टीका", "कोविड टीका"),
        ("لقاح كورونا", "لقاح كورونا"),
        ("ｶﾀｶﾅ", "カタカナ"),  # half-width katakana to full-width
        ("中古車", "中古車"),
    ],
)
def test_normalize_key(text, key):
    assert normalize_key(text) == key


def test_zero_width_joiner_is_kept():
    # ZWJ / ZWNJ change the spelling of Devanagari and Persian words.
    assert "\u200c" in normalize_key("می\u200cخواهم")


@given(st.text())
def test_never_raises_and_is_idempotent(text):
    key = normalize_key(text)
    assert normalize_key(key) == key


@given(st.text())
def test_key_has_no_control_characters_or_stray_whitespace(text):
    key = normalize_key(text)
    assert key == key.strip()
    assert "  " not in key
    assert not any(unicodedata.category(ch) == "Cc" for ch in key)
    assert all(ch == " " or not ch.isspace() for ch in key)


@given(st.text(alphabet=st.characters(max_codepoint=127)))
def test_ascii_fast_path_agrees_with_the_unicode_path(text):
    from bulkinfer.keys import _one_pass

    assert normalize_key(text) == _one_pass(text)
