"""The stored form of a model call's reply (`model_calls.response_text` and `.response`): each
generated text is stored once.

`response_text` holds the text (or, for a call that sampled several, their JSON list). The raw
response as the server sent it holds the same texts again in its choices; stored, each choice
whose text `response_text` holds verbatim is left out (its `content` is null, and the response is
marked), and `expanded_response` puts it back for whoever shows the response as received. A text
that `response_text` holds only cut short stays in the response. The server's response is
untrusted input: anything not shaped as expected is stored and shown as it came.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from typing import Any

TEXTS_STORED_APART = "rstar_texts_in"
"""Marks a response whose choices' texts were left out; the value says where they are."""


def recorded_texts(response_text: str | None, sequences: int | None) -> tuple[str, ...]:
    """A recorded call's sequences, from its `response_text` (the text, or for a call that sampled
    several, their JSON list: see `workers.client.stored_text`)."""
    if sequences is not None and sequences > 1 and response_text:
        try:
            texts = json.loads(response_text)
        except ValueError:
            return (response_text,)
        if isinstance(texts, list) and all(isinstance(t, str) for t in texts):
            return tuple(texts)
    return (response_text or "",)


def _messages(response: Any) -> Iterator[dict[str, Any]]:
    """The response's choices' messages in order: one chat completion, or a call sent in parts
    (`{"responses": [...]}`, one completion per part)."""
    if not isinstance(response, dict):
        return
    parts = response.get("responses")
    for part in parts if isinstance(parts, list) else [response]:
        choices = part.get("choices") if isinstance(part, dict) else None
        for choice in choices if isinstance(choices, list) else []:
            message = choice.get("message") if isinstance(choice, dict) else None
            if isinstance(message, dict):
                yield message


def compact_response(
    response: dict[str, Any] | None, response_text: str | None, sequences: int | None
) -> dict[str, Any] | None:
    """The response to store: the texts `response_text` holds verbatim left out (see above)."""
    if response is None or response_text is None:
        return response
    texts = recorded_texts(response_text, sequences)
    if len(list(_messages(response))) != len(texts):
        return response
    stored = copy.deepcopy(response)
    left_out = 0
    for message, text in zip(_messages(stored), texts, strict=True):
        if isinstance(message.get("content"), str) and message["content"] == text:
            message["content"] = None
            left_out += 1
    if not left_out:
        return response
    stored[TEXTS_STORED_APART] = "response_text"
    return stored


def expanded_response(
    response: dict[str, Any] | None, response_text: str | None, sequences: int | None
) -> dict[str, Any] | None:
    """The response as the server sent it, from its stored form."""
    if not isinstance(response, dict) or TEXTS_STORED_APART not in response:
        return response
    shown = copy.deepcopy(response)
    del shown[TEXTS_STORED_APART]
    texts = recorded_texts(response_text, sequences)
    for message, text in zip(_messages(shown), texts, strict=False):
        if message.get("content") is None:
            message["content"] = text
    return shown
