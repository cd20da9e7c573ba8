"""If-None-Match against our weak ETags (RFC 9110 §13.1.2: weak comparison, lists, ``*``)."""

from __future__ import annotations

from services.common.conditional import matches, response_metadata, weak_etag


def test_weak_etags_are_stable_opaque_and_differ_with_any_part():
    tag = weak_etag(1, "a", None)
    assert tag == weak_etag(1, "a", None) and tag.startswith('W/"') and tag.endswith('"')
    assert tag != weak_etag(1, "a", "") and tag != weak_etag("1a", None)


def test_if_none_match_compares_weakly_and_accepts_lists_and_star():
    tag = weak_etag("feed")
    opaque = tag.removeprefix("W/")
    assert matches(tag, tag) and matches(opaque, tag)  # a client may send the tag without W/
    assert matches(f'W/"other", {tag}', tag) and matches(" * ", tag)
    assert not matches("", tag) and not matches('W/"other"', tag) and not matches(tag[:-2] + '"', tag)
    assert not matches(f"{tag}," * 1000, tag)  # absurdly long: ignored, the full answer is sent


def test_the_not_modified_marker_only_on_a_match():
    assert dict(response_metadata('W/"x"', not_modified=False)) == {
        "etag": 'W/"x"',
        "cache-control": "private, no-cache",
    }
    assert dict(response_metadata('W/"x"', not_modified=True))["x-cowatch-not-modified"] == "1"
