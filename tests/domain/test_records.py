"""A call is stored with each text once (rstar/records.py): the raw response without the texts
`response_text` holds, the request without its system prompt (shared by digest), and both shown as
they were sent and received again."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from rstar.records import (
    SHARED_TEXTS,
    TEXTS_STORED_APART,
    compact_request,
    compact_response,
    expanded_request,
    expanded_response,
    pack_json,
    shared_digests,
    text_digest,
    unpack_json,
)


def _completion(*texts: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": "m",
        "choices": [
            {"index": i, "message": {"role": "assistant", "content": t}, "finish_reason": "stop"}
            for i, t in enumerate(texts)
        ],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5 * len(texts)},
    }


@pytest.mark.parametrize(
    ("response", "response_text", "sequences"),
    [
        (_completion("The answer is 7."), "The answer is 7.", 1),
        (_completion("a", "b", "c"), json.dumps(["a", "b", "c"]), 3),  # one request with n = 3
        (  # sent in parts: one completion per sample (TGI ignores n)
            {"responses": [_completion("a"), _completion("b")]},
            json.dumps(["a", "b"]),
            2,
        ),
    ],
)
def test_each_text_is_stored_once_and_shown_as_received(
    response: dict[str, Any], response_text: str, sequences: int
) -> None:
    sent = copy.deepcopy(response)
    stored = compact_response(response, response_text, sequences)
    assert stored is not None and stored[TEXTS_STORED_APART] == "response_text"
    parts = stored.get("responses", [stored])
    assert [c["message"]["content"] for p in parts for c in p["choices"]] == [None] * sequences
    assert expanded_response(stored, response_text, sequences) == sent
    assert response == sent  # the caller's object is left alone


def test_a_text_cut_short_in_response_text_stays_in_the_response() -> None:
    long = "x" * 100
    response = _completion(long, "b")
    stored = compact_response(response, json.dumps(["x" * 10 + "... [truncated]", "b"]), 2)
    assert stored is not None
    assert [c["message"]["content"] for c in stored["choices"]] == [long, None]
    assert expanded_response(stored, json.dumps(["x" * 10 + "... [truncated]", "b"]), 2) == response


@pytest.mark.parametrize(
    "response",
    [
        {"unexpected": "not a completion"},
        {"choices": "nope"},
        {"choices": [{"message": "[in response_text]"}]},
        {"choices": [{"message": {"content": 7}}]},
        {"responses": [None, {"choices": None}]},
        _completion("a", "b"),  # two choices, one text: not this call's texts
    ],
)
def test_anything_else_is_stored_as_it_came(response: dict[str, Any]) -> None:
    assert compact_response(response, "a", 1) == response
    assert expanded_response(response, "a", 1) == response


def test_responses_of_earlier_releases_show_as_stored() -> None:
    old = _completion("The answer is 7.")
    assert expanded_response(old, "The answer is 7.", 1) == old
    assert compact_response(None, "t", 1) is None and expanded_response(None, "t", 1) is None


FEW_SHOT = "You are a careful solver. Example 1: ...\n" * 20


def _request(system: str = FEW_SHOT, user: str = "Q: what is 2+3? " * 30) -> dict[str, Any]:
    return {
        "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}],
        "temperature": 0.5,
        "max_tokens": 256,
        "n": 3,
    }


def test_a_requests_system_prompt_is_stored_apart_and_put_back() -> None:
    sent = _request()
    stored, texts = compact_request(sent)
    assert texts == {text_digest(FEW_SHOT): FEW_SHOT}
    assert stored["messages"][0] == {"role": "system", "content": None}
    assert stored["messages"][1] == sent["messages"][1]  # a user message differs per call: inline
    assert shared_digests(stored) == (text_digest(FEW_SHOT),)
    assert len(json.dumps(stored)) < len(json.dumps(sent)) - len(FEW_SHOT) + 150
    shown = expanded_request(stored, texts)
    assert shown == sent and list(shown) == list(sent)  # keys in the order sent
    assert sent == _request()  # the caller's object is left alone


def test_two_calls_with_one_system_prompt_name_one_text() -> None:
    first, texts_1 = compact_request(_request(user="first"))
    second, texts_2 = compact_request(_request(user="second"))
    assert texts_1 == texts_2 and first[SHARED_TEXTS] == second[SHARED_TEXTS]


@pytest.mark.parametrize(
    "request_",
    [
        _request(system="Be brief."),  # too short to be worth a digest
        {"inputs": FEW_SHOT + "Q: 2+3?", "parameters": {"max_new_tokens": 9}},  # TGI's native route
        {"messages": "not a list"},
        {"messages": [{"role": "system", "content": ["parts", "not", "text"]}, "junk"]},
    ],
)
def test_a_request_with_nothing_to_share_is_stored_as_sent(request_: dict[str, Any]) -> None:
    assert compact_request(request_) == (request_, {})


def test_a_stored_request_stores_as_it_is() -> None:
    """A reused call's request (tasks/reuse.py) is the stored form already: nothing to add."""
    stored, _ = compact_request(_request())
    assert compact_request(stored) == (stored, {})


def test_a_text_missing_stays_null_and_a_damaged_marker_is_dropped() -> None:
    stored, _ = compact_request(_request())
    shown = expanded_request(stored, {})
    assert SHARED_TEXTS not in shown and shown["messages"][0]["content"] is None
    damaged = {**stored, SHARED_TEXTS: {"7": "x", "zero": "y", "0": 5}}
    assert expanded_request(damaged, {"x": "t", "y": "t"})["messages"] == stored["messages"]
    assert expanded_request(["not", "a", "dict"], {}) == ["not", "a", "dict"]


@pytest.mark.parametrize("value", [_completion("2 + 3 = 5", "5"), {"a": [1, 2.5, None, True]}, [], "é ☃"])
def test_a_packed_value_unpacks_to_itself(value: Any) -> None:
    packed = pack_json(value)
    assert isinstance(packed, bytes)
    assert unpack_json(packed) == value


def test_a_repetitive_response_packs_small() -> None:
    response = _completion(*(["The answer is 5."] * 32))  # 32 votes of one prompt are much alike
    assert len(pack_json(response)) * 3 < len(json.dumps(response, separators=(",", ":")))
