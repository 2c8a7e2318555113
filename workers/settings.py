"""All configuration, from `RSTAR_*` environment variables (or a `.env` file), validated at start-up."""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from rstar.roster import ModelEntry, pair, parse_models_env

# "llama-cpp": llama-cpp-python's server (one request at a time, no `n`); "llama-server": llama.cpp's
# own server (parallel slots, `n` up to its slot count).
ServerKind = Literal["auto", "tgi", "llama-cpp", "llama-server", "vllm", "openai", "plain"]


def default_cache_dir() -> Path:
    return Path.home() / ".cache" / "rstar"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="RSTAR_", env_file=".env", env_ignore_empty=True, extra="ignore"
    )

    database_url: str = "sqlite:///rstar.db"
    broker_url: str = "redis://127.0.0.1:6379/0"

    # The model roster: "A=url,B=url,C=url" (a job stores the one it was submitted with, without
    # credentials). Unset: A = RSTAR_MODEL_A_URL and B = RSTAR_MODEL_B_URL (default: A's URL).
    models: SecretStr | None = None
    model_a_url: str | None = None
    model_b_url: str | None = None
    # `rstar submit` refuses a job whose model servers do not answer HTTP; false: enqueue anyway
    # (the servers are still starting, and the steps wait in their queues).
    check_models: bool = True
    # The endpoints a worker serves, whitespace-separated, with their credentials (jobs store the
    # URLs without them): how `rstar worker --endpoint URL` hands them to its Celery process.
    worker_endpoints: SecretStr | None = None
    # How to ask for structured output; "auto" asks the server (TGI's /info, else /v1/models).
    server_kind: ServerKind = "auto"
    # Sent as a bearer token to the inference servers; never logged or stored.
    api_token: SecretStr | None = None

    request_timeout: float = Field(default=120.0, gt=0, description="seconds per model call")
    max_retries: int = Field(default=5, ge=0, description="retries of a retryable model-call failure")
    retry_backoff: float = Field(default=1.0, gt=0, description="first retry delay, seconds; doubles")
    retry_backoff_max: float = Field(default=60.0, gt=0)

    # Threads per worker process: each thread keeps one model request in flight. Unset, `rstar
    # worker` sizes the pool from its endpoints' limits (`pool_threads`); set, it is used as given.
    worker_concurrency: int | None = Field(default=None, ge=1)
    # Flow control: model requests one worker process keeps in flight per endpoint. Default: the
    # server's max_concurrent_requests (TGI's /info) divided by workers_per_endpoint, so the
    # workers together keep the server at its limit without tripping its 429s. `rstar worker` gives
    # itself a quarter more threads than that: the extra threads do the database work around calls.
    max_in_flight: int | None = Field(default=None, ge=1)
    workers_per_endpoint: int = Field(default=1, ge=1, description="worker processes sharing an endpoint")
    # A replica of a model (rstar/roster.py) that stopped answering gets no calls from this process
    # for this long; then one call tries it again (workers/replicas.py).
    replica_down_seconds: float = Field(default=10.0, gt=0, description="seconds, see workers/replicas.py")
    # Database sessions one process runs at a time; its other threads wait their turn (SQLite: one,
    # always). Two spent less CPU per model call than no limit, one or four (docs/throughput.md).
    db_sessions: int = Field(default=2, ge=1)
    # Celery task events from the start (Flower turns the workers' events on anyway while it runs).
    task_events: bool = False
    # Celery's "Task ... received" and "... succeeded" INFO lines, two per task (~0.2 ms of CPU per
    # model call; every call is in the audit trail anyway). Failures and retries are logged either way.
    task_log: bool = False
    task_time_limit: int = Field(default=900, gt=0, description="hard limit per task, seconds")

    # Problems of one job started and not finished at once (tasks/dispatch.py, `feed`): the broker
    # holds their steps only, not the whole job's, and answers come out from the first minutes.
    # Unset, submit gives each job twice its servers' in-flight slots (tasks/submit.py, `job_window`).
    job_window: int | None = Field(default=None, gt=0, description="problems of a job in progress at once")

    # Recovery (see tasks/recovery.py). A running step's lease is renewed every lease/4 seconds
    # while its worker lives; a lease left to expire marks a dead worker, and its step is re-sent.
    lease_seconds: float = Field(default=60.0, gt=0, description="lease on a running step, seconds")
    # Redis redelivers a message not acknowledged within this many seconds (a worker died holding
    # it). Default: long enough for the longest task plus its retry delay.
    visibility_timeout: int | None = Field(default=None, gt=0)
    recovery_interval: float = Field(default=30.0, gt=0, description="seconds between recovery sweeps")
    # A queued step that has waited this long while its queue in the broker is empty has no message
    # (a submit killed while sending, a worker killed holding it): the sweep sends it again.
    requeue_grace: float = Field(default=180.0, gt=0, description="seconds, see tasks/recovery.py")
    # Ctrl-C on a worker: how long the calls in flight get before it leaves them to the recovery
    # sweep (workers/shutdown.py).
    shutdown_grace: float = Field(default=5.0, ge=0, description="seconds, see workers/shutdown.py")
    # How long a worker holding a model's reply keeps trying to record it while the database is
    # unreachable, before giving up (the call would then be paid again).
    db_outage_grace: float = Field(default=300.0, ge=0)

    # Limits on what a job may ask for.
    max_question_chars: int = Field(default=20_000, gt=0)
    max_problems_per_job: int = Field(default=100_000, gt=0)
    # An input file larger than this is refused before it is read whole (`rstar submit /dev/zero`
    # would read until the memory runs out).
    max_input_bytes: int = Field(default=512 * 1024 * 1024, gt=0)
    max_rounds_limit: int = Field(default=10, gt=0)

    cache_dir: Path = Field(default_factory=default_cache_dir)

    @property
    def models_dir(self) -> Path:
        return self.cache_dir / "models"

    def roster(self) -> list[ModelEntry]:
        """The models of the environment: RSTAR_MODELS, else RSTAR_MODEL_A_URL / _B_URL (empty when
        neither is set). Raises RosterError on a malformed entry."""
        if self.models is not None:
            return parse_models_env(self.models.get_secret_value())
        if not self.model_a_url:
            return []
        return pair(
            self.model_a_url, self.model_b_url, what_a="RSTAR_MODEL_A_URL", what_b="RSTAR_MODEL_B_URL"
        )


# In-flight slots counted for an endpoint that does not report its limit (or cannot be asked at
# start-up): the pool a worker had for everything before it was sized from the servers.
FALLBACK_SLOTS = 32
# The control queue's select tasks are short and rare (the selection is mostly made inline).
CONTROL_THREADS = 1


def pool_threads(
    slots: Iterable[int | None], *, fallback: int = FALLBACK_SLOTS, control: int = CONTROL_THREADS
) -> int:
    """Threads for a worker process with these in-flight slots per endpoint (None: not reported,
    `fallback` counted): a quarter more than the slots, rounded up, since a thread also does the
    database work around its call and a slot left idle meanwhile is GPU time lost; plus `control`."""
    total = sum(fallback if n is None else n for n in slots)
    return total + -(-total // 4) + control


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
