"""Keeping secrets out of messages: passwords in service URLs and tokens from settings."""

from __future__ import annotations

import re
from urllib.parse import quote, unquote, urlsplit

# Up to the end of a URL's authority: (optional scheme and "//", the authority). RFC 3986: the
# authority ends at the first "/", "?" or "#", and userinfo is what comes before its last "@"
# (httpx and urllib split it the same way, so what is shown is what is sent).
_AUTHORITY = re.compile(r"^(\s*(?:[A-Za-z][A-Za-z0-9+.-]*:)?//)?([^/?#]*)")


def _split_userinfo(url: str) -> tuple[str, str | None, str]:
    """(everything before the userinfo, the userinfo or None, everything after its "@")."""
    match = _AUTHORITY.match(url)
    assert match is not None  # every group is optional
    userinfo, at, host = match.group(2).rpartition("@")
    if not at:
        return url, None, ""
    start = match.group(1) or ""
    return start, userinfo, host + url[match.end() :]


def without_userinfo(url: str) -> str:
    """`url` without the `user:password@` of its authority, else unchanged: an endpoint as it is
    shown, stored and named in queue names (the credentials go only into the HTTP request)."""
    start, userinfo, rest = _split_userinfo(url)
    return url if userinfo is None else start + rest


def url_credentials(url: str) -> tuple[str, str] | None:
    """The (user, password) of the URL's userinfo, percent-decoded; None without userinfo."""
    _, userinfo, _ = _split_userinfo(url)
    if userinfo is None:
        return None
    user, _, password = userinfo.partition(":")
    return unquote(user), unquote(password)


def same_endpoint(a: str, b: str) -> bool:
    """`a` and `b` name the same endpoint, credentials aside."""
    return without_userinfo(a).strip().rstrip("/").lower() == without_userinfo(b).strip().rstrip("/").lower()


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
