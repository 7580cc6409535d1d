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


# Spellings that must meet at one key, per script: (first, second).
MEET = {
    "full-width latin, digits, ideographic space": ("ＣＯＶＩＤ－１９\u3000ｗａｃｈｓ", "covid-19 wachs"),
    "half-width katakana with voiced mark": ("ｶﾞｲﾄﾞ", "ガイド"),
    "CJK compatibility ideograph": ("\uf900", "\u8c48"),
    "Kangxi radical": ("\u2f00", "一"),
    "CJK full-width punctuation": ("新冠疫苗（预约）", "新冠疫苗(预约)"),
    "Arabic tatweel": ("كـــورونا", "كورونا"),
    "Arabic harakat": ("لُقَاحُ كُورُونَا", "لقاح كورونا"),
    "Arabic shadda and tanwin": ("مُدَرِّسٌ", "مدرس"),
    "Arabic presentation forms": ("\ufedf\ufed8\ufe8e\ufea3", "لقاح"),
    "Arabic bidi marks": ("\u200fلقاح كورونا\u200f", "لقاح كورونا"),
    "Arabic-Indic digits": ("ايفون ١٥", "ايفون 15"),
    "Persian digits": ("آیفون ۱۵", "آیفون 15"),
    "Persian yeh and keheh": ("کتاب ایرانی", "كتاب ايراني"),
    "Hebrew niqqud": ("שָׁלוֹם", "שלום"),
    "Cyrillic case": ("КРОССОВКИ Для БЕГА", "кроссовки для бега"),
    "Cyrillic yo": ("ёлка всё", "елка все"),
    "Cyrillic decomposed short i": ("и\u0306од", "йод"),
    "Ukrainian apostrophe": ("м’ясо", "м'ясо"),
    "Ukrainian modifier apostrophe": ("м\u02bcясо", "м'ясо"),
    "Devanagari nukta precomposed vs decomposed": ("\u0958\u093e\u0928", "\u0915\u093c\u093e\u0928"),
    "Devanagari nukta ra": ("\u0931", "\u0930\u093c"),
    "Devanagari digits": ("आईफोन १५", "आईफोन 15"),
    "Greek final sigma and case": ("ΣΟΦΟΣ", "σοφος"),
    "Turkish dotted capital I": ("İSTANBUL", "istanbul"),
    "Turkish dotless i": ("KIZ KULESI", "kız kulesi"),
    "German sharp s": ("STRASSE", "straße"),
    "French typographic apostrophe": ("l’hôpital", "l'hôpital"),
    "Latin decomposed accents": ("cafe\u0301", "café"),
    "hyphen variants": ("covid\u201119", "covid-19"),
    "emoji variation selector": ("\u2764\ufe0f", "\u2764"),
    "Thai digits": ("ไอโฟน ๑๕", "ไอโฟน 15"),
}

# Spellings that must stay distinct: they can mean different things, or are different markets.
DISTINCT = {
    "hiragana vs katakana": ("かたかな", "カタカナ"),
    "simplified vs traditional Chinese": ("汽车", "汽車"),
    "CJK words are not segmented": ("二手车 出售", "二手车出售"),
    "Arabic hamza on alef": ("أمل", "امل"),
    "Arabic teh marbuta vs heh": ("سيارة", "سياره"),
    "Arabic alef maksura vs yeh": ("على", "علي"),
    "Persian zero-width non-joiner": ("می\u200cخواهم", "میخواهم"),
    "Devanagari nukta kept": ("ज़रूरत", "जरूरत"),
    "Devanagari chandrabindu vs anusvara": ("हँसना", "हंसना"),
    "Hindi virama with zero-width joiner": ("क्\u200dष", "क्ष"),
    "Greek accents kept": ("πότε", "ποτε"),
    "Latin accents kept": ("café", "cafe"),
    "German umlaut kept": ("schön", "schon"),
    "Cyrillic e vs Ukrainian ie": ("е", "є"),
}


@pytest.mark.parametrize("pair", list(MEET.values()), ids=list(MEET))
def test_spellings_meet(pair):
    first, second = pair
    assert normalize_key(first) == normalize_key(second)


@pytest.mark.parametrize("pair", list(DISTINCT.values()), ids=list(DISTINCT))
def test_spellings_stay_distinct(pair):
    first, second = pair
    assert normalize_key(first) != normalize_key(second)


def test_arabic_hamza_on_letters_survives_harakat_removal():
    # Hamza above (U+0654) is part of a letter, not a vowel mark: decomposed and composed forms meet and keep it.
    assert normalize_key("\u0627\u0654\u064e\u0645\u0644") == normalize_key("أمل") == "أمل"


@given(st.text(alphabet=st.characters(codec="utf-8", categories=["Lo", "Mn", "Nd", "Zs", "Cf"]), max_size=12))
def test_idempotent_on_marks_digits_and_format_characters(text):
    key = normalize_key(text)
    assert normalize_key(key) == key


_SOME_UNICODE = ["é", "İ", "ı", "Ｃ", "\u3000", "ё", "\u200b", "ﬁ", "١", "\x85", "\xa0"]
_MIXED_TEXT = st.text(alphabet=st.sampled_from([*map(chr, range(128)), *_SOME_UNICODE]))


@given(st.lists(st.one_of(st.none(), _MIXED_TEXT, st.text()), max_size=40), st.integers(0, 5))
def test_normalize_keys_over_a_column_equals_normalize_key_per_string(texts, cut):
    import pyarrow as pa

    from bulkinfer.keys import normalize_keys

    column = pa.array(texts, pa.string()).slice(min(cut, len(texts)))  # a sliced array starts at an offset
    want = [None if text is None else normalize_key(text) for text in column.to_pylist()]
    assert normalize_keys(column).to_pylist() == want
    assert normalize_keys(pa.chunked_array([column, column], pa.string())).to_pylist() == want + want


def test_normalize_keys_of_plain_ascii_is_its_lower_case():
    import pyarrow as pa

    from bulkinfer.keys import normalize_keys

    texts = ["Covid Vaccine", "cheap flights", "a b", "", "x  y", " lead", "trail ", "tab\there", None]
    assert normalize_keys(pa.array(texts)).to_pylist() == [None if t is None else normalize_key(t) for t in texts]
