"""Secrets come from settings and never show: the database password (RSTAR_DATABASE_URL), the
broker password (RSTAR_BROKER_URL), the inference servers' token (RSTAR_API_TOKEN) and Flower's
password appear in no log, no CLI output, no stored row; inference requests carry the token;
Flower refuses requests without its password; the compose file takes every secret from the
environment. Credentials in an endpoint URL (`http://user:password@host`) travel only in the HTTP
request (basic auth): queue names, output, logs, Redis and the database hold the URL without them."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import urllib.error
import urllib.request
from base64 import b64encode
from pathlib import Path
from urllib.parse import quote

import redis
import yaml
from sqlalchemy import select
from sqlalchemy.engine import make_url

from db.models import Base, Problem
from db.session import session_scope
from tasks.base import with_credentials
from tests.fakeserver import FakeInferenceServer, Reply, basic_authorization
from tests.reliability.harness import (
    FAST,
    env_for,
    gsm_job,
    queues_for,
    servers,
    submit,
    wait_finished,
)
from tests.support import REPO, RedisServer, celery_worker, free_port, rstar, service_env, wait_until
from workers.celery_app import queue_for_endpoint
from workers.client import ModelClient, auth_headers
from workers.redact import same_endpoint, url_credentials, without_userinfo
from workers.settings import Settings

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


# -- credentials in endpoint URLs ------------------------------------------------------------------

USER = "rstar"
# A "/" and an "@": they must be percent-encoded in the URL, and decoded for the server.
PW_A = "EndpointPwA-6u2/q"
PW_B = "EndpointPwB-8r4@k"


def _credentialed(url: str, password: str) -> str:
    return url.replace("http://", f"http://{USER}:{quote(password, safe='')}@", 1)


def test_endpoint_urls_without_userinfo() -> None:
    plain = "http://tgi-a:8080/"
    assert queue_for_endpoint(plain) == "rstar.model.tgi-a-8080"  # today's names are kept
    assert queue_for_endpoint("https://Host.example:443/v1") == "rstar.model.host-example-443-v1"
    for url in ("http://u:pw@tgi-a:8080/", "http://u@tgi-a:8080", "http://u:p%40w@ss@tgi-a:8080"):
        assert without_userinfo(url).rstrip("/") == "http://tgi-a:8080"
        assert queue_for_endpoint(url) == queue_for_endpoint(plain)
        assert same_endpoint(url, plain)
    assert without_userinfo(plain) == plain
    assert without_userinfo("http://host:1/path@x?q=a@b") == "http://host:1/path@x?q=a@b"  # not userinfo
    assert url_credentials("http://u%3Ax:p%2Fw@h:1") == ("u:x", "p/w")
    assert url_credentials(plain) is None
    assert not same_endpoint("http://h:1", "http://h:2")
    # The URL's own credentials win over the token meant for all servers.
    assert auth_headers("http://u:p@h", "tok") == {"Authorization": basic_authorization("u", "p")}
    assert auth_headers("http://h", "tok") == {"Authorization": "Bearer tok"}
    assert auth_headers("http://h", None) == {}


def _redis_dump(url: str) -> str:
    """Every key and every value (`KEYS *`), as text."""
    client = redis.Redis.from_url(url)
    read = {
        b"string": client.get,
        b"list": lambda k: client.lrange(k, 0, -1),
        b"set": client.smembers,
        b"zset": lambda k: client.zrange(k, 0, -1),
        b"hash": client.hgetall,
    }
    try:
        keys = client.keys("*")
        assert keys
        return "\n".join(f"{key!r}: {read.get(client.type(key), repr)(key)!r}" for key in keys)
    finally:
        client.close()


def _database_dump(db_url: str) -> list[str]:
    """Every stored row, every column; on SQLite the whole file's SQL dump too."""
    texts = []
    with session_scope(db_url) as s:
        for table in Base.metadata.sorted_tables:
            texts.extend(repr(tuple(row)) for row in s.execute(select(table)).all())
    if db_url.startswith("sqlite"):
        conn = sqlite3.connect(make_url(db_url).database or "")
        try:
            texts.append("\n".join(conn.iterdump()))
        finally:
            conn.close()
        assert 'INSERT INTO "jobs"' in texts[-1]
    return texts


def test_endpoint_credentials_never_appear(db_url: str, redis_url: str, tmp_path: Path) -> None:
    """Submit with credentialed URLs to servers that require them; worker A gets its URL from
    `rstar worker --endpoint`, worker B from RSTAR_MODEL_B_URL. The job is answered (the servers
    saw the credentials on every request), and no output, log, Redis key or value, or database row
    holds them."""
    job = gsm_job(tmp_path, 2)
    env = service_env(db_url, redis_url, **FAST)  # no RSTAR_MODEL_*_URL: the URLs come with --model-*
    texts: list[str] = []

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        out = rstar(list(args), env)
        texts.append(out.stdout + out.stderr)
        assert out.returncode == 0, out.stderr
        return out

    with (
        FakeInferenceServer(job.oracle_a, authorization=basic_authorization(USER, PW_A)) as a,
        FakeInferenceServer(job.oracle_b, authorization=basic_authorization(USER, PW_B)) as b,
    ):
        url_a, url_b = _credentialed(a.url, PW_A), _credentialed(b.url, PW_B)
        run("db", "upgrade")
        # An error reply without a body: the client's message then names the URL it requested.
        a.inject(Reply(status=503, raw_body=b""))
        out = run("submit", str(job.path), "--name", "creds", "--model-a", url_a, "--model-b", url_b)
        job_id = int(out.stdout.strip())
        assert all(f" {queue_for_endpoint(s.url)}" in out.stderr for s in (a, b))
        assert "credentials in the endpoint URLs were not stored" in out.stderr
        texts.append(_redis_dump(redis_url))  # the messages still queued

        log_a, log_b = tmp_path / "worker-a.log", tmp_path / "worker-b.log"
        with log_a.open("wb") as log:
            worker_a = subprocess.Popen(
                [sys.executable, "-m", "cli.main", "worker", "--endpoint", url_a, "--concurrency", "2",
                 "--without-gossip", "--without-mingle", "--without-heartbeat"],
                env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        try:
            env_b = {**env, "RSTAR_MODEL_B_URL": url_b}
            with celery_worker(env_b, [queue_for_endpoint(b.url)], concurrency=2, log=log_b):
                wait_finished(db_url, job_id)
                texts.extend(_flower(env, tmp_path / "flower.log"))
        finally:
            worker_a.send_signal(signal.SIGTERM)
            worker_a.wait(timeout=20)
        texts.append(_redis_dump(redis_url))
        report = tmp_path / "report"
        for args in (
            ("status", str(job_id)),
            ("show", str(job_id), "gsm-0"),
            ("results", str(job_id), "--format", "csv"),
            ("report", str(job_id), "-o", str(report)),
        ):
            run(*args)
        texts.extend(p.read_text() for p in report.iterdir() if p.suffix in (".md", ".csv"))
        requests = [*a.requests, *b.requests]
        refused = a.unauthorized + b.unauthorized

    with session_scope(db_url) as s:
        statuses = s.scalars(select(Problem.status).where(Problem.job_id == job_id)).all()
    assert statuses == ["answered", "answered"]
    # The credentials reached the servers, on every request (the fake servers refuse any other).
    assert len(requests) >= 8 and refused == 0
    texts.extend(p.read_text(errors="replace") for p in (log_a, log_b, tmp_path / "flower.log"))
    assert "503" in texts[-3] or "503" in texts[-2]  # the error path was taken
    texts.extend(_database_dump(db_url))
    forbidden = [
        PW_A.split("/")[0],  # the password, percent-encoded or not
        PW_B.split("@")[0],
        basic_authorization(USER, PW_A).split()[1],
        basic_authorization(USER, PW_B).split()[1],
    ]
    for text in texts:
        for secret in forbidden:
            assert secret not in text, (secret, text[:2000])


def test_worker_finds_the_credentials_it_was_given() -> None:
    """A job stores its endpoints bare; the worker's own URLs for them (--endpoint, which reaches
    its Celery process as RSTAR_WORKER_ENDPOINTS, or RSTAR_MODEL_A/B_URL) add the credentials."""
    url_a, url_b = _credentialed("http://tgi-a:8080", PW_A), _credentialed("http://tgi-b:8080/", PW_B)
    settings = Settings(_env_file=None, worker_endpoints=f"http://other:1 {url_a}", model_b_url=url_b)
    assert with_credentials("http://tgi-a:8080", settings) == url_a
    assert with_credentials("http://TGI-B:8080", settings) == url_b
    assert with_credentials("http://tgi-c:8080", settings) == "http://tgi-c:8080"
    assert ModelClient(url_a).base_url == "http://tgi-a:8080"
