"""The one exception tree for model-server failures. Tasks see only these, never library errors.

    ModelServerError
     ├── RetryableError            retried by the tasks with backoff and jitter
     │    ├── OverloadedError      HTTP 429 (TGI's "overloaded": it has no queue)
     │    ├── UnavailableError     HTTP 5xx / 424, connection refused or dropped
     │    ├── ModelTimeoutError    no complete answer within the timeout
     │    └── MalformedReplyError  a body that is not JSON or not a chat completion
     └── PermanentError            not retried: the problem fails with this error
          └── RequestRejectedError HTTP 4xx other than 408/429 (e.g. 422 validation)

Every error carries what the audit trail needs: the request sent, the HTTP status and body (if
any) and the latency, so a failed attempt is recorded exactly like a successful one.
"""

from __future__ import annotations

from typing import Any


class ModelServerError(Exception):
    def __init__(
        self,
        message: str,
        *,
        http_status: int | None = None,
        body: str | None = None,
        request: dict[str, Any] | None = None,
        latency_ms: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.http_status = http_status
        self.body = body
        self.request = request
        self.latency_ms = latency_ms
        # A fanned-out call (n requests, one per sample) that failed: what the others generated
        # is paid for, and recorded with the failure.
        self.requests = 1
        self.sequences = 0
        self.prompt_tokens: int | None = None
        self.completion_tokens: int | None = None
        self.response: dict[str, Any] | None = None


class RetryableError(ModelServerError):
    """A failure that may pass: try again later."""


class OverloadedError(RetryableError):
    """The server refused the request because too many are in flight (HTTP 429)."""


class UnavailableError(RetryableError):
    """The server is down, restarting or failed to generate (5xx, 424, connection errors)."""


class ModelTimeoutError(RetryableError):
    """The server did not answer within the timeout."""


class MalformedReplyError(RetryableError):
    """The server answered 200 with a body that is not a chat completion."""


class PermanentError(ModelServerError):
    """A failure that will not pass by retrying."""


class RequestRejectedError(PermanentError):
    """The server rejected the request itself (HTTP 4xx such as 422 validation)."""
