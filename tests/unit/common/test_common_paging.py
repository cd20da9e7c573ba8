from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from uuid import uuid4

import pytest

from services.common.errors import InvalidArgument
from services.common.paging import (
    clamp_page_size,
    decode_page_token,
    encode_page_token,
    filter_fingerprint,
)

FILTERS = {"city": "Berlin", "film_id": "f-1", "has_free_seats": True}


def invalid_token_error(token: str, fingerprint: str) -> InvalidArgument:
    with pytest.raises(InvalidArgument) as info:
        decode_page_token(token, fingerprint)
    assert info.value.reason == "INVALID_PAGE_TOKEN"
    assert info.value.field_violations[0][0] == "page_token"
    return info.value


def test_round_trip_keeps_types():
    fp = filter_fingerprint(FILTERS)
    keys = (datetime(2030, 5, 1, 19, 30, tzinfo=UTC), uuid4(), "x", 3, 1.5, None, True)
    token = encode_page_token(keys, fp)
    assert "=" not in token and "+" not in token and "/" not in token
    assert decode_page_token(token, fp) == keys


def test_empty_token_means_first_page():
    assert decode_page_token("", filter_fingerprint(FILTERS)) is None


def test_fingerprint_is_canonical_and_short():
    fp = filter_fingerprint(FILTERS)
    assert len(fp) == 16
    assert fp == filter_fingerprint(dict(reversed(list(FILTERS.items()))))
    assert fp != filter_fingerprint({**FILTERS, "city": "Paris"})


def test_changed_filters_are_refused():
    token = encode_page_token(["k", 1], filter_fingerprint(FILTERS))
    error = invalid_token_error(token, filter_fingerprint({**FILTERS, "city": "Paris"}))
    assert "filters" in error.field_violations[0][1]


@pytest.mark.parametrize(
    "token",
    [
        "%%%not-base64%%%",
        base64.urlsafe_b64encode(b"not json").decode(),
        base64.urlsafe_b64encode(json.dumps([1, 2]).encode()).decode(),
        base64.urlsafe_b64encode(json.dumps({"v": 2, "k": [], "f": "x"}).encode()).decode(),
        base64.urlsafe_b64encode(json.dumps({"v": 1, "k": [{"t": "yesterday"}], "f": "FP"}).encode()).decode(),
        "A" * 5000,
    ],
)
def test_malformed_tokens_are_refused(token: str):
    invalid_token_error(token, "FP")


def test_tampered_token_is_refused():
    fp = filter_fingerprint(FILTERS)
    token = encode_page_token([datetime(2030, 1, 1, tzinfo=UTC), uuid4()], fp)
    invalid_token_error(token[:-6], fp)


@pytest.mark.parametrize(("requested", "expected"), [(0, 50), (1, 1), (50, 50), (100, 100), (1000, 100)])
def test_page_size_is_clamped(requested: int, expected: int):
    assert clamp_page_size(requested) == expected


def test_negative_page_size_is_invalid():
    with pytest.raises(InvalidArgument) as info:
        clamp_page_size(-1)
    assert info.value.field_violations == (("page_size", "must not be negative"),)
