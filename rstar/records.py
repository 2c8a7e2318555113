"""The stored form of a model call (`model_calls.request`, `.response_text` and `.response`): each
text is stored once.

The reply: `response_text` holds the text (or, for a call that sampled several, their JSON list).
The raw response as the server sent it holds the same texts again in its choices; stored, each
choice whose text `response_text` holds verbatim is left out (its `content` is null, and the
response is marked), and `expanded_response` puts it back for whoever shows the response as
received. A text that `response_text` holds only cut short stays in the response. The server's
response is untrusted input: anything not shaped as expected is stored and shown as it came.

An output's text (`outputs.text`) is most often one of its call's sequences verbatim: stored, it
is null and `outputs.text_seq` says which of `response_text`'s sequences it is (`sequence_index`);
the database puts it back where it is read (`db.models`).

The request: a strategy's system message (its instructions and few-shot examples, the same in
every call of a kind) is most of a request's bytes. Stored, its content is null and the request
names it by digest (`SHARED_TEXTS`: message index -> sha256 of the text); the text itself is a row
of `shared_texts`, one per distinct text in the whole database. `expanded_request` gives the
request as sent. User and assistant messages stay inline: they differ from call to call.

The raw response, once its texts are left out, is what the server said about them (ids, usage,
timings, finish reasons): read by people, never queried, and repetitive. It is stored packed
(`pack_json`: its compact JSON, zlib-compressed); the request and the texts stay plain, where SQL
reads them.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from collections.abc import Iterator, Mapping
from typing import Any

TEXTS_STORED_APART = "rstar_texts_in"
"""Marks a response whose choices' texts were left out; the value says where they are."""

SHARED_TEXTS = "rstar_shared_texts"
"""Marks a request whose system messages are stored apart: {message index: the text's digest}."""

SHARE_FROM = 64
"""System messages this long or longer are shared (a digest costs 64 characters)."""


PACK_LEVEL = 6
"""zlib's default level."""


def pack_json(value: Any) -> bytes:
    """A JSON value as stored packed: its compact JSON text (as the database's JSON columns write
    it), zlib-compressed."""
    return zlib.compress(json.dumps(value, separators=(",", ":")).encode(), PACK_LEVEL)


def unpack_json(data: bytes) -> Any:
    """The value `pack_json` packed."""
    return json.loads(zlib.decompress(data))


def recorded_texts(response_text: str | None, sequences: int | None) -> tuple[str, ...]:
    """A recorded call's sequences, from its `response_text` (the text, or for a call that sampled
    several, their JSON list: see `workers.client.stored_text`)."""
    if sequences is not None and sequences > 1 and response_text:
        texts = _text_list(response_text)
        if texts is not None:
            return tuple(texts)
    return (response_text or "",)


def _text_list(response_text: str) -> list[str] | None:
    """A sampled call's `response_text` as its list of texts, or None when it is not one."""
    try:
        texts = json.loads(response_text)
    except ValueError:
        return None
    return texts if isinstance(texts, list) and all(isinstance(t, str) for t in texts) else None


def sequence_index(
    text: str | None, response_text: str | None, sequences: int | None, *, first: int = 0
) -> int | None:
    """Which of a recorded call's sequences `text` is verbatim (the first such at or after `first`,
    else the first anywhere), or None: stored only where the database can read it back, from
    `response_text` itself (one sequence) or from its JSON list (several)."""
    if text is None or response_text is None:
        return None
    if sequences is None or sequences <= 1:
        return 0 if text == response_text else None
    texts = _text_list(response_text)  # read as `recorded_texts` reads it, so they agree
    if texts is None:
        return None
    found = [i for i, t in enumerate(texts) if t == text]
    return next((i for i in found if i >= first), found[0] if found else None)


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


def _copy_to_messages(response: dict[str, Any]) -> dict[str, Any]:
    """A copy of the response in which the containers on the way to each message, and the
    messages, are new (what `compact_response` edits), the rest shared: a deep copy of 32
    completions cost more than the rest of recording them."""

    def choices_copied(part: Any) -> Any:
        choices = part.get("choices") if isinstance(part, dict) else None
        if not isinstance(choices, list):
            return part
        return {**part, "choices": [_message_copied(c) for c in choices]}

    parts = response.get("responses")
    if isinstance(parts, list):
        return {**response, "responses": [choices_copied(p) for p in parts]}
    return dict(choices_copied(response))


def _message_copied(choice: Any) -> Any:
    if not isinstance(choice, dict) or not isinstance(choice.get("message"), dict):
        return choice
    return {**choice, "message": dict(choice["message"])}


def compact_response(
    response: dict[str, Any] | None, response_text: str | None, sequences: int | None
) -> dict[str, Any] | None:
    """The response to store: the texts `response_text` holds verbatim left out (see above)."""
    if response is None or response_text is None:
        return response
    texts = recorded_texts(response_text, sequences)
    if len(list(_messages(response))) != len(texts):
        return response
    stored = _copy_to_messages(response)
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
    shown = _copy_to_messages(response)
    del shown[TEXTS_STORED_APART]
    texts = recorded_texts(response_text, sequences)
    for message, text in zip(_messages(shown), texts, strict=False):
        if message.get("content") is None:
            message["content"] = text
    return shown


def text_digest(text: str) -> str:
    """A shared text's key: the sha256 of its UTF-8 bytes, in hex."""
    return hashlib.sha256(text.encode()).hexdigest()


def compact_request(request: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """The request to store and the texts it now names ({digest: text}) for `shared_texts`.
    A request stored already (a reused call's) is returned as it is, with no texts."""
    messages = request.get("messages")
    if SHARED_TEXTS in request or not isinstance(messages, list):
        return request, {}
    shared: dict[str, str] = {}
    texts: dict[str, str] = {}
    stored_messages = list(messages)
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") != "system":
            continue
        content = message.get("content")
        if isinstance(content, str) and len(content) >= SHARE_FROM:
            digest = text_digest(content)
            texts[digest] = content
            shared[str(i)] = digest
            stored_messages[i] = {**message, "content": None}
    if not shared:
        return request, {}
    return {**request, "messages": stored_messages, SHARED_TEXTS: shared}, texts


def shared_digests(request: Any) -> tuple[str, ...]:
    """The digests of the texts a stored request names."""
    shared = request.get(SHARED_TEXTS) if isinstance(request, dict) else None
    return tuple(d for d in shared.values() if isinstance(d, str)) if isinstance(shared, dict) else ()


def expanded_request(request: Any, texts: Mapping[str, str]) -> Any:
    """The request as sent, from its stored form and the shared texts it names (a text missing
    from `texts` stays null)."""
    if not isinstance(request, dict) or SHARED_TEXTS not in request:
        return request
    shown = {k: v for k, v in request.items() if k != SHARED_TEXTS}
    shared, messages = request[SHARED_TEXTS], request.get("messages")
    if not isinstance(shared, dict) or not isinstance(messages, list):
        return shown
    shown["messages"] = list(messages)
    for index, digest in shared.items():
        i = int(index) if isinstance(index, str) and index.isdigit() else -1
        if 0 <= i < len(messages) and isinstance(messages[i], dict) and digest in texts:
            shown["messages"][i] = {**messages[i], "content": texts[digest]}
    return shown
