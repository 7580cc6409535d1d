"""The one key normaliser shared by the batch job and every cache consumer.

A live system looks a prediction up with whatever spelling its user typed; the job
stored it under the spelling the corpus had. Both sides call :func:`normalize_key`,
so ``"  Covid   VACCINE "`` and ``"covid vaccine"`` meet at the same key.
"""

from __future__ import annotations

import re
import unicodedata

# Invisible characters that carry no meaning in a search query but make two
# identical-looking strings differ. Zero-width (non-)joiners are deliberately
# absent: they change how Devanagari, Arabic and Persian words are spelt.
_INVISIBLE = "\u00ad\u200b\u2060\ufeff\u180e"
# Control characters (Unicode category Cc) that are not whitespace; the whitespace
# ones (tab, line breaks, \x1c-\x1f, \x85) become spaces when whitespace collapses.
_DROP = re.compile(f"[\x00-\x08\x0e-\x1b\x7f-\x84\x86-\x9f{_INVISIBLE}]")


def normalize_key(text: str) -> str:
    """Returns the lookup key of a query.

    Steps: Unicode NFKC with full case folding (NFKC_Casefold: full-width forms,
    ligatures and compatibility characters fold to their plain form), control and
    invisible characters removed, every run of whitespace collapsed to one space,
    leading and trailing whitespace trimmed. The function is idempotent and never
    raises on a ``str``; an all-whitespace or control-only query gives ``""``.

    Args:
        text: the query as the user or the corpus spelt it.

    Returns:
        The normalised key.
    """
    if text.isascii():
        # ASCII is already NFKC and folds by lower(); most queries take this path.
        return " ".join(_DROP.sub("", text).lower().split())
    key = _one_pass(text)
    # Case folding can expose characters that NFKC composes differently (and the
    # reverse); repeating until nothing changes makes the function idempotent.
    for _ in range(4):
        again = _one_pass(key)
        if again == key:
            break
        key = again
    return key


def _one_pass(text: str) -> str:
    folded = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", text).casefold())
    return " ".join(_DROP.sub("", folded).split())
