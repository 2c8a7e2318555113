"""Keeping secrets out of messages: passwords in service URLs and tokens from settings."""

from __future__ import annotations

from urllib.parse import quote, unquote, urlsplit


def url_password(url: str) -> str | None:
    try:
        password = urlsplit(url).password
    except ValueError:
        return None
    return unquote(password) if password else None


def scrub(text: str, *secrets: str | None) -> str:
    """`text` with every given secret (and its URL-quoted form) replaced by ***."""
    for secret in secrets:
        if secret:
            for form in {secret, quote(secret, safe="")}:
                text = text.replace(form, "***")
    return text
