"""The manifest's figures computed by column: keys by language."""

import collections

import pyarrow as pa

from bulkinfer.pipelines.summary import keys_by_language


def test_keys_by_language_counts_like_a_counter_over_the_rows():
    codes = ["en", None, "", "de", "en", "unknown", None, "fr", "de", "en"]
    rows = pa.table({"language": pa.array(codes, pa.string())})
    expected = collections.Counter(code or "unknown" for code in codes)
    assert keys_by_language(rows) == dict(sorted(expected.items(), key=lambda kv: (-kv[1], kv[0])))
    assert list(keys_by_language(rows)) == ["unknown", "en", "de", "fr"], "most first, then by code"


def test_keys_by_language_without_rows():
    assert keys_by_language(None) == {}
    assert keys_by_language(pa.table({"language": pa.array([], pa.string())})) == {}
