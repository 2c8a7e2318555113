"""A call's reply is stored with each text once (rstar/records.py): the raw response without the
texts `response_text` holds, and shown as received again."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from rstar.records import TEXTS_STORED_APART, compact_response, expanded_response


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
