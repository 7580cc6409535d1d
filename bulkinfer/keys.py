"""The one key normaliser shared by the batch job and every cache consumer.

A live system looks a prediction up with whatever spelling its user typed; the job
stored it under the spelling the corpus had. Both sides call :func:`normalize_key`,
so ``"  Covid   VACCINE "`` and ``"covid vaccine"`` meet at the same key.

What folds and what stays distinct, by script (the README lists the same rules):

- Everywhere: NFKC with full case folding (full-width and half-width forms, ligatures,
  presentation forms, CJK compatibility ideographs); controls, zero-width spaces,
  soft hyphens, bidi marks and variation selectors removed; decimal digits of every
  script to ASCII (``١٥`` → ``15``); typographic apostrophes ``’ ʼ`` to ``'`` and
  the hyphens U+2010/U+2011 to ``-``; whitespace runs (U+3000 included) to one space.
  Zero-width (non-)joiners stay: they change how Persian and Indic words are spelt.
- Latin: Turkish ``İ`` and ``ı`` fold to ``i``, so every case variant of a Turkish word
  meets (locale-free case folding cannot map ``I`` to ``ı``).
- Cyrillic: ``ё`` folds to ``е`` (Russian text mostly writes ``е`` for both).
- Arabic script: tatweel and harakat (short vowels, shadda, sukun, tanwin, Quranic
  marks) removed; Persian/Urdu ``ی`` and ``ک`` fold to Arabic ``ي`` and ``ك`` (the
  same letters, typed on different keyboards). Hamza on alef, teh marbuta and alef
  maksura stay distinct: they can tell words apart.
- Hebrew: points and cantillation marks removed.
- Devanagari and other Indic scripts: nukta letters meet in both their precomposed and
  decomposed forms (NFKC); nukta, chandrabindu and anusvara are kept.
- CJK: no case; hiragana, katakana, simplified and traditional characters stay distinct,
  and nothing is segmented: ``二手车 出售`` and ``二手车出售`` are different keys.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa

KEY_VERSION = 2
"""Bumped whenever :func:`normalize_key` returns a different key for some text. Tables
record it in their manifest (``key_normalizer``); a consumer must normalise with the
same version as the table it reads, or some lookups miss."""

# Invisible characters that carry no meaning in a search query but make two
# identical-looking strings differ. Zero-width (non-)joiners are deliberately
# absent: they change how Devanagari, Arabic and Persian words are spelt.
_INVISIBLE = "\u00ad\u200b\u2060\ufeff\u180e"
# Control characters (Unicode category Cc) that are not whitespace; the whitespace
# ones (tab, line breaks, \x1c-\x1f, \x85) become spaces when whitespace collapses.
_DROP = re.compile(f"[\x00-\x08\x0e-\x1b\x7f-\x84\x86-\x9f{_INVISIBLE}]")


def _spans(cps: Iterable[int]) -> list[tuple[int, int]]:
    """Runs of consecutive code points, as (first, last)."""
    spans: list[tuple[int, int]] = []
    for cp in sorted(cps):
        if spans and spans[-1][1] == cp - 1:
            spans[-1] = (spans[-1][0], cp)
        else:
            spans.append((cp, cp))
    return spans


def _ranges(*spans: tuple[int, int]) -> list[int]:
    return [cp for first, last in spans for cp in range(first, last + 1)]


_REMOVED = [
    *_ranges((0x00, 0x08), (0x0E, 0x1B), (0x7F, 0x84), (0x86, 0x9F)),  # controls that are not whitespace
    *(ord(ch) for ch in _INVISIBLE),
    *_ranges((0x200E, 0x200F), (0x202A, 0x202E), (0x2066, 0x2069)),  # bidi marks, embeddings, isolates
    0x061C,  # Arabic letter mark (bidi)
    *_ranges((0xFE00, 0xFE0F), (0xE0100, 0xE01EF)),  # variation selectors: a glyph choice, same character
    0x0640,  # Arabic tatweel: pure elongation
    # Arabic harakat and Quranic annotation marks; hamza above/below (U+0654, U+0655) is a letter part, kept.
    *_ranges((0x0610, 0x061A), (0x064B, 0x0653), (0x0656, 0x065F), (0x06D6, 0x06DC), (0x06DF, 0x06E4), (0x06E7, 0x06E8)),
    *_ranges((0x06EA, 0x06ED)),
    0x0670,  # Arabic superscript alef
    # Hebrew cantillation and points (niqqud); maqaf U+05BE and sof pasuq U+05C3 are punctuation, kept.
    *_ranges((0x0591, 0x05BD), (0x05C1, 0x05C2), (0x05C4, 0x05C5)),
    0x05BF,
    0x05C7,
]
_FOLD: dict[int, str | None] = {cp: None for cp in _REMOVED}
_FOLD.update(
    {
        0x06CC: "\u064a",  # Persian yeh → Arabic yeh
        0x06A9: "\u0643",  # keheh (Persian kaf) → Arabic kaf
        0x0451: "\u0435",  # ё → е
        0x0131: "i",  # dotless ı → i (and "i̇", the case fold of İ, loses its dot below)
        0x2019: "'",  # right single quotation mark used as an apostrophe
        0x02BC: "'",  # modifier letter apostrophe (Ukrainian, many transliterations)
        0x2010: "-",  # hyphen (U+2011 non-breaking hyphen becomes U+2010 under NFKC)
    }
)


class _FoldTable(dict):
    """``str.translate`` table: the fixed folds above, plus every non-ASCII decimal digit to ASCII.

    Digits are resolved on first sight (there are ~700 of them in 70 scripts) and cached,
    so the table never holds more than the characters the data actually uses.
    """

    def __missing__(self, cp: int) -> str | int:
        ch = chr(cp)
        value: str | int = str(unicodedata.decimal(ch)) if unicodedata.category(ch) == "Nd" else cp
        self[cp] = value
        return value


_TABLE = _FoldTable(_FOLD)
# Whether a string needs the table at all: most keys need none, and one regex scan is
# cheaper than translating character by character. [^\D0-9] is a non-ASCII digit.
_NEEDS_FOLD = re.compile(
    "["
    + "".join(re.escape(chr(a)) if a == b else f"{re.escape(chr(a))}-{re.escape(chr(b))}" for a, b in _spans(_FOLD))
    + "\u0307]|[^\\D0-9]"
)


def normalize_key(text: str) -> str:
    """Returns the lookup key of a query.

    Steps: Unicode NFKC with full case folding (NFKC_Casefold: full-width forms,
    ligatures and compatibility characters fold to their plain form), the per-script
    folds in this module's docstring, control and invisible characters removed, every
    run of whitespace collapsed to one space, leading and trailing whitespace trimmed.
    The function is idempotent and never raises on a ``str``; an all-whitespace or
    control-only query gives ``""``.

    Args:
        text: the query as the user or the corpus spelt it.

    Returns:
        The normalised key.
    """
    if text.isascii():
        # ASCII is already NFKC, none of the folds touch it, and lower() is its case fold.
        return " ".join(_DROP.sub("", text).lower().split())
    key = _one_pass(text)
    if key == text:
        return key  # already a key (most corpus queries and lookups of stored keys): a fixed point
    # Case folding and removed marks can expose characters that NFKC composes
    # differently; repeating until nothing changes makes the function idempotent.
    for _ in range(4):
        again = _one_pass(key)
        if again == key:
            break
        key = again
    return key


def _one_pass(text: str) -> str:
    folded = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", text).casefold())
    if _NEEDS_FOLD.search(folded):
        # İ case-folds to i + combining dot above; the dot goes with it.
        folded = folded.translate(_TABLE).replace("i\u0307", "i")
    return " ".join(folded.split())


def normalize_keys(texts: pa.Array | pa.ChunkedArray) -> pa.Array:
    """:func:`normalize_key` of every string of an Arrow array, as an Arrow string array (nulls stay null).

    A string of printable ASCII without leading, trailing or repeated spaces (most
    queries and answer items) normalises to its lower case, which Arrow computes for
    all of them at once; the bytes that make a string need more (anything outside
    printable ASCII, a space next to a space or an end) are found with numpy over the
    whole buffer. Only the strings they flag go through :func:`normalize_key` itself,
    each distinct one once.
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    if isinstance(texts, pa.ChunkedArray):
        texts = pa.concat_arrays(texts.chunks) if texts.num_chunks else pa.array([], pa.string())
    texts = texts.cast(pa.string())
    n = len(texts)
    if n == 0:
        return texts

    def odd(data: np.ndarray) -> np.ndarray:
        space = data == 0x20
        found = (data < 0x20) | (data >= 0x7F)
        found[1:] |= space[1:] & space[:-1]
        return found

    flagged = strings_holding(texts, odd)
    offsets, data = _string_buffers(texts)
    space = data == 0x20
    nonempty = np.diff(offsets) > 0
    flagged[nonempty] |= space[offsets[:-1][nonempty]] | space[offsets[1:][nonempty] - 1]
    lowered = pc.ascii_lower(texts)
    if not flagged.any():
        return lowered
    flagged &= texts.is_valid().to_numpy(zero_copy_only=False)
    other = pa.array(np.flatnonzero(flagged))
    encoded = texts.take(other).dictionary_encode()
    folded = pa.array([normalize_key(text) for text in encoded.dictionary.to_pylist()], pa.string()).take(encoded.indices)
    # Scatter the flagged strings' keys back into place.
    slot = np.cumsum(flagged) - 1
    return pc.if_else(pa.array(flagged), folded.take(pa.array(np.where(flagged, slot, 0))), lowered)


def strings_holding(texts: pa.Array, odd: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """Which strings of a string array hold a byte ``odd`` flags (numpy booleans, one per string).

    ``odd`` gets the UTF-8 bytes of all the strings at once (numpy ``uint8``) and returns a
    boolean per byte; such bytes are few, so they are found over the whole buffer, then the
    strings they fall in. Nulls and empty strings hold none.
    """
    import numpy as np

    offsets, data = _string_buffers(texts)
    flagged = np.zeros(len(texts), bool)
    flagged[np.searchsorted(offsets, np.flatnonzero(odd(data)), side="right") - 1] = True
    return flagged


def _string_buffers(texts: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """A string array's offsets (from 0, int64) and the bytes they point into."""
    import numpy as np

    n = len(texts)
    if n == 0:
        return np.zeros(1, np.int64), np.zeros(0, np.uint8)
    offsets = np.frombuffer(texts.buffers()[1], np.int32)[texts.offset : texts.offset + n + 1].astype(np.int64)
    data = np.frombuffer(texts.buffers()[2], np.uint8) if texts.buffers()[2] is not None else np.zeros(0, np.uint8)
    return offsets - offsets[0], data[offsets[0] : offsets[-1]]
