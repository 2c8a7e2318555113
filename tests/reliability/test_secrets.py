"""Secrets come from settings and never show: the database password (RSTAR_DATABASE_URL), the
broker password (RSTAR_BROKER_URL), the inference servers' token (RSTAR_API_TOKEN) and Flower's
password appear in no log, no CLI output, no stored row; inference requests carry the token;
Flower refuses requests without its password; the compose file takes every secret from the
environment."""

from __future__ import annotations

import subprocess
import sys
import urllib.error
import urllib.request
from base64 import b64encode
from pathlib import Path

import yaml
from sqlalchemy import select
from sqlalchemy.engine import make_url

from db.models import Base
from db.session import session_scope
from tests.fakeserver import Reply
from tests.reliability.harness import (
    RedisServer,
    env_for,
    free_port,
    gsm_job,
    queues_for,
    servers,
    submit,
    wait_finished,
)
from tests.support import REPO, celery_worker, rstar, wait_until

DB_PW = "DbPw-7c1e9q"
BROKER_PW = "BrokerPw-3f8a2z"
TOKEN = "Tok-5d0b4e6x"
FLOWER_PW = "FlowerPw-9a7c3w"
SECRETS = (DB_PW, BROKER_PW, TOKEN, FLOWER_PW)


def _get(url: str, auth: str | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url)
    if auth:
        request.add_header("Authorization", "Basic " + b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, ""


def _flower(env: dict[str, str], log: Path) -> list[str]:
    """Run Flower with its password from the environment; what it served, with and without it."""
    port = free_port()
    seen: list[str] = []
    with log.open("wb") as out:
        argv = [sys.executable, "-m", "celery", "-A", "workers.celery_app", "flower", f"--port={port}"]
        proc = subprocess.Popen(
            [*argv, "--address=127.0.0.1"],
            env={**env, "FLOWER_BASIC_AUTH": f"admin:{FLOWER_PW}"},
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            base = f"http://127.0.0.1:{port}"

            def up() -> bool:
                try:
                    return _get(base + "/healthcheck")[0] == 200
                except OSError:
                    return False

            wait_until(up, timeout=30, what="Flower")
            assert _get(base + "/")[0] == 401
            assert _get(base + "/", f"admin:{FLOWER_PW}x")[0] == 401
            for path in ("/", "/broker", "/workers", "/api/workers?refresh=1", "/tasks"):
                status, body = _get(base + path, f"admin:{FLOWER_PW}")
                assert status == 200, path
                seen.append(body)
        finally:
            proc.terminate()
            proc.wait(timeout=10)
    return seen


def test_secrets_never_appear(postgres_url: str, tmp_path: Path) -> None:
    db_url = make_url(postgres_url).set(password=DB_PW).render_as_string(hide_password=False)
    job = gsm_job(tmp_path, 3)
    texts: list[str] = []

    with RedisServer(tmp_path, password=BROKER_PW) as broker, servers(job.oracle_a, job.oracle_b) as (a, b):
        env = env_for(db_url, broker.url, a, b, RSTAR_API_TOKEN=TOKEN)

        def run(*args: str, env: dict[str, str] = env) -> subprocess.CompletedProcess[str]:
            out = rstar(list(args), env)
            texts.append(out.stdout + out.stderr)
            return out

        assert run("db", "upgrade").returncode == 0
        a.inject(Reply(status=503, error="try later"))  # an error path into the audit trail too
        job_id = submit(env, job.path)
        with celery_worker(env, queues_for(a, b), concurrency=2, log=tmp_path / "worker.log"):
            wait_finished(db_url, job_id)
            texts.extend(_flower(env, tmp_path / "flower.log"))
        for args in (
            ("status", str(job_id)),
            ("show", str(job_id), "gsm-0"),
            ("results", str(job_id), "--format", "csv"),
            ("status", "999"),  # an error message naming the database
        ):
            run(*args)
        assert "***" in texts[-1]  # the database URL is shown, its password masked
        # A broker that does not answer: the error names it, without its password.
        dead = {**env, "RSTAR_BROKER_URL": f"redis://:{BROKER_PW}@127.0.0.1:{free_port()}/0"}
        refused = run("submit", str(job.path), env=dead)
        assert refused.returncode == 1 and "cannot reach the broker at redis://:***@" in refused.stderr
        requests = [*a.requests, *b.requests]

    # Every inference request carried the bearer token.
    assert requests and all(r.headers.get("authorization") == f"Bearer {TOKEN}" for r in requests)
    texts.append((tmp_path / "worker.log").read_text(errors="replace"))
    texts.append((tmp_path / "flower.log").read_text(errors="replace"))
    assert "redis://:**@127.0.0.1" in texts[-2]  # Celery's banner masks the broker password
    # Every stored row, every column.
    with session_scope(db_url) as s:
        for table in Base.metadata.sorted_tables:
            for row in s.execute(select(table)).all():
                texts.append(repr(tuple(row)))
    for text in texts:
        for secret in SECRETS:
            assert secret not in text, (secret, text[:2000])


def test_compose_takes_every_secret_from_the_environment() -> None:
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    services = compose["services"]
    flower = services["flower"]
    assert flower["environment"]["FLOWER_BASIC_AUTH"].endswith(":${FLOWER_PASSWORD:?set FLOWER_PASSWORD}")
    assert not any("basic-auth" in str(part) for part in flower["command"])  # not in the process list
    assert "${POSTGRES_PASSWORD" in services["postgres"]["environment"]["POSTGRES_PASSWORD"]
    worker_env = services["worker-a"]["environment"]
    assert "${POSTGRES_PASSWORD" in worker_env["RSTAR_DATABASE_URL"]
    assert worker_env["RSTAR_API_TOKEN"].startswith("${")
