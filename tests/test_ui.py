"""`rstar ui` in a real headless browser (Debian's chromium through its chromedriver, driven by
Selenium), against a real `rstar ui` process on a database written by real workers.

The database holds the previous release's seven jobs (migrated) and two fresh ones run here through
Celery and Redis on fake servers that speak the real protocol: a mutual job whose model B writes
markup into its solutions and reviews, and an rstar search. Each page is saved as a screenshot
(into RSTAR_UI_SCREENSHOTS when set: `docs/ui/` holds the ones made this way).
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from db import browse, migrate
from db.models import Job, ModelCall, Output, Problem, Selection
from db.reports import load_report
from db.session import dispose_all, session_scope
from rstar.plots import CostPoint, cost_points
from tests.fakeserver import FakeInferenceServer, FakeRequest, Reply
from tests.support import (
    REPO,
    celery_worker,
    flushed_redis,
    gsm8k_rows,
    oracle_pair,
    rstar,
    service_env,
    unavailable,
    wait_until,
    write_jsonl,
)
from tests.test_rstar_e2e import PARAMS, MctsOracle
from workers.celery_app import CONTROL_QUEUE, queue_for_endpoint

pytestmark = [pytest.mark.redis, pytest.mark.browser]

RELEASE_DB = REPO / "tests" / "data" / "previous_release" / "jobs.sqlite"
REDIS_URL = os.environ.get("RSTAR_TEST_REDIS_URL", "redis://127.0.0.1:6379/14")
CHROMIUM = Path(os.environ.get("RSTAR_CHROMIUM", "/usr/bin/chromium"))
CHROMEDRIVER = Path(os.environ.get("RSTAR_CHROMEDRIVER", "/usr/bin/chromedriver"))

# What model B writes: markup that would run if it reached the page unescaped.
XSS_SCRIPT = '<script>window.__xss = "script"</script>'
XSS_IMG = "<img src=x onerror=\"window.__xss = 'img'\">"


def _hostile(inner: Any) -> Any:
    """A responder that adds markup to every solution step list and review issue list."""

    def respond(request: FakeRequest) -> Reply | str:
        text = inner(request)
        if not isinstance(text, str):
            return text
        body = json.loads(text)
        if "steps" in body:
            body["steps"] = [XSS_SCRIPT, *body["steps"], f"Also {XSS_IMG}"]
        if "issues" in body:
            body["issues"] = [*body["issues"], {"step": 1, "description": XSS_IMG}]
        return json.dumps(body)

    return respond


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Viewer:
    """A running `rstar ui` process."""

    def __init__(self, db_url: str, log: Path, *args: str) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        env = service_env(db_url, REDIS_URL)
        self._out = log.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cli.main", "ui", "--port", str(self.port), *args],
            env=env,
            cwd=REPO,
            stdout=self._out,
            stderr=subprocess.STDOUT,
        )

    def wait_ready(self, **auth: Any) -> None:
        def up() -> bool:
            assert self.proc.poll() is None, self.log.read_text()
            try:
                return httpx.get(self.url + "/static/style.css", timeout=2, **auth).status_code in (200, 401)
            except httpx.HTTPError:
                return False

        wait_until(up, timeout=30, what="rstar ui")

    def stop(self) -> str:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._out.close()
        return self.log.read_text(errors="replace")


@pytest.fixture(scope="module")
def jobs_db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int, int]]:
    """The database, with (url, mutual job with hostile text, rstar job)."""
    client = flushed_redis(REDIS_URL)
    tmp = tmp_path_factory.mktemp("ui")
    shutil.copy(RELEASE_DB, tmp / "jobs.sqlite")
    url = f"sqlite:///{tmp / 'jobs.sqlite'}"
    migrate.upgrade(url)
    mutual_rows = gsm8k_rows(3, offset=170)
    search_rows = gsm8k_rows(2, offset=180)
    a_oracle, b_oracle = oracle_pair(mutual_rows)
    mcts = MctsOracle(search_rows)
    env = service_env(url, REDIS_URL)

    def items(rows: list[dict[str, str]], prefix: str) -> list[dict[str, object]]:
        return [
            {"id": f"{prefix}{j}", "question": r["question"], "answer": r["answer"]}
            for j, r in enumerate(rows)
        ]

    with (
        FakeInferenceServer(a_oracle, kind="tgi") as a,
        FakeInferenceServer(_hostile(b_oracle), kind="tgi") as b,
        FakeInferenceServer(mcts, kind="vllm") as g,
        FakeInferenceServer(mcts, kind="tgi") as d,
    ):
        sub = rstar(
            ["submit", str(write_jsonl(tmp / "m.jsonl", items(mutual_rows, "m"))), "--name", "hostile-text",
             "--model", f"A={a.url}", "--model", f"B={b.url}"],
            env,
        )  # fmt: skip
        assert sub.returncode == 0, sub.stderr
        mutual_job = int(sub.stdout.strip())
        args = ["submit", str(write_jsonl(tmp / "s.jsonl", items(search_rows, "s"))), "--name", "search"]
        args += ["--strategy", "rstar", "--model", f"A={g.url}", "--model", f"B={d.url}"]
        for p in PARAMS:
            args += ["--param", p]
        sub = rstar(args, env)
        assert sub.returncode == 0, sub.stderr
        search_job = int(sub.stdout.strip())
        queues = [CONTROL_QUEUE, *(queue_for_endpoint(s.url) for s in (a, b, g, d))]
        with celery_worker(env, queues, log=tmp / "worker.log"):

            def finished() -> bool:
                with session_scope(url) as s:
                    jobs = [s.get(Job, i) for i in (mutual_job, search_job)]
                    return all(j is not None and j.finished_at is not None for j in jobs)

            wait_until(finished, timeout=180, what="the two jobs")
    yield url, mutual_job, search_job
    client.flushdb()
    client.close()
    dispose_all()


@pytest.fixture(scope="module")
def viewer(jobs_db: tuple[str, int, int], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Viewer]:
    v = Viewer(jobs_db[0], tmp_path_factory.mktemp("viewer") / "ui.log")
    v.wait_ready()
    yield v
    v.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists() or not CHROMEDRIVER.exists():
        unavailable(
            f"{CHROMIUM} and {CHROMEDRIVER} are needed (Debian: apt-get install chromium chromium-driver)"
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    profile = tempfile.mkdtemp(prefix="rstar-chromium-")
    # Without the background-networking flags chromium keeps dialling Google's hosts, which this
    # closed network refuses.
    for arg in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--window-size=1400,1000", f"--user-data-dir={profile}",
    ):  # fmt: skip
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.implicitly_wait(5)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    where = os.environ.get("RSTAR_UI_SCREENSHOTS")
    path = Path(where) if where else tmp_path_factory.mktemp("screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path


def _results(db_url: str, job_id: int) -> list[dict[str, Any]]:
    """`rstar results`: what the viewer's numbers must agree with."""
    out = rstar(["results", str(job_id)], service_env(db_url, REDIS_URL))
    assert out.returncode == 0, out.stderr
    return [json.loads(line) for line in out.stdout.splitlines()]


def _by(css: str) -> tuple[str, str]:
    from selenium.webdriver.common.by import By

    return By.CSS_SELECTOR, css


def _text(browser: Any, css: str) -> str:
    """An element's text, or "" while it is not there: htmx replaces the polled fragments every
    2 s, and an element found just before a swap is stale when read (seen on a loaded machine)."""
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException

    try:
        return str(browser.find_element(*_by(css)).text)
    except (NoSuchElementException, StaleElementReferenceException):
        return ""


def _click(browser: Any, css: str) -> None:
    """Click the element, found afresh if a swap made the one found stale."""
    from selenium.common.exceptions import StaleElementReferenceException

    def clicked() -> bool:
        try:
            browser.find_element(*_by(css)).click()
        except StaleElementReferenceException:
            return False
        return True

    wait_until(clicked, timeout=60, what=f"a click on {css}")


def _console_errors(driver: Any) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e["level"] in ("SEVERE", "WARNING")]


def _leave_page(driver: Any) -> None:
    """Unload the open page and drain the console. A page left open on a viewer that a test then
    stops keeps polling its fragments every 2 s and logs each refused request; a later test that
    reads the console would take those for its own (seen in CI: a draining get_log raced the old
    page's next poll)."""
    driver.get("about:blank")
    driver.get_log("browser")


def test_jobs_page_to_a_wrong_answer_and_its_model_calls(
    browser: Any, viewer: Viewer, jobs_db: tuple[str, int, int], shots: Path
) -> None:
    db_url = jobs_db[0]
    browser.get(viewer.url + "/")
    rows = browser.find_elements(*_by("tr.job-row"))
    with session_scope(db_url) as s:
        assert len(rows) == s.scalar(select(func.count()).select_from(Job))
    job3 = browser.find_element(*_by('tr.job-row[data-job="3"]'))
    assert "mutual-3-rounds" in job3.text and "83.3%" in job3.text and "5/6" in job3.text
    browser.save_screenshot(str(shots / "jobs.png"))

    job3.find_element(*_by("td:nth-child(2) a")).click()
    assert browser.find_element(*_by("h1")).text == "Job 3: mutual-3-rounds"
    assert len(browser.find_elements(*_by("tr.problem-row"))) == 6
    browser.save_screenshot(str(shots / "job.png"))

    wrong = [r for r in _results(db_url, 3) if r["correct"] is False]
    assert wrong
    browser.find_element(*_by('a[data-outcome="wrong"]')).click()
    listed = browser.find_elements(*_by("tr.problem-row"))
    assert [r.find_element(*_by("td.outcome")).text for r in listed] == ["wrong"] * len(wrong)
    assert [r.find_element(*_by("a.problem-link")).text for r in listed] == [r["id"] for r in wrong]

    listed[0].find_element(*_by("a.problem-link")).click()
    assert browser.find_element(*_by("#outcome")).text == "wrong"
    assert browser.find_element(*_by("#final-answer")).text == wrong[0]["final_answer"]
    with session_scope(db_url) as s:
        reason = s.scalar(
            select(Selection.reason)
            .join(Problem)
            .where(Problem.job_id == 3, Problem.item_id == wrong[0]["id"])
        )
    assert browser.find_element(*_by("#selection .reason")).text == reason
    call = browser.find_element(*_by("details.call"))
    call_id = int(call.get_attribute("id").removeprefix("call"))
    with session_scope(db_url) as s:
        recorded = s.get(ModelCall, call_id)
        assert recorded is not None
        reply, tokens = (
            recorded.response_text,
            f"{recorded.prompt_tokens}+{recorded.completion_tokens} tokens",
        )
    assert tokens in call.text
    body = call.find_element(*_by(".reply pre"))
    assert not body.is_displayed()  # folded until clicked
    call.find_element(*_by("summary")).click()
    assert body.is_displayed() and body.text == reply.strip()
    browser.save_screenshot(str(shots / "problem.png"))
    assert not _console_errors(browser)


def test_model_text_is_shown_as_text_and_never_runs(
    browser: Any, viewer: Viewer, jobs_db: tuple[str, int, int], shots: Path
) -> None:
    db_url, mutual_job, _ = jobs_db
    with session_scope(db_url) as s:
        stored = s.scalar(
            select(func.count()).select_from(Output).join(Problem).where(
                Problem.job_id == mutual_job, Output.text.contains("onerror=")
            )
        )  # fmt: skip
    assert stored  # the hostile text really is in the database
    browser.get(f"{viewer.url}/jobs/{mutual_job}/problems/m0")
    for summary in browser.find_elements(*_by("details.call > summary")):
        summary.click()  # replies and prompts (B's solution quoted in A's review prompt) on show
    page = browser.find_element(*_by("main")).text
    assert XSS_SCRIPT in page and XSS_IMG in page
    assert browser.execute_script("return window.__xss") is None
    assert browser.find_elements(*_by("main img")) == []
    assert browser.execute_script("return document.scripts.length") == 1  # htmx, nothing else
    # Nothing even tried to run (a script the Content-Security-Policy blocked would be logged).
    assert not _console_errors(browser)
    browser.save_screenshot(str(shots / "escaped.png"))


def test_the_search_tree_is_drawn_with_the_winning_path(
    browser: Any, viewer: Viewer, jobs_db: tuple[str, int, int], shots: Path
) -> None:
    db_url, _, search_job = jobs_db
    browser.get(f"{viewer.url}/jobs/{search_job}/problems/s0")
    with session_scope(db_url) as s:
        problem = s.scalar(select(Problem).where(Problem.job_id == search_job, Problem.item_id == "s0"))
        assert problem is not None
        kinds = list(s.scalars(select(Output.kind).where(Output.problem_id == problem.id)))
        final = problem.final_answer
    nodes = browser.find_elements(*_by("#search-tree li.node"))
    # The root (the question) and one node per tree output (a sub-question is part of its answer's
    # node, and the discriminator's completions are not nodes).
    assert len(nodes) == 1 + sum(k not in ("a3_question", "rc_complete") for k in kinds)
    winner = browser.find_element(*_by("#search-tree li.winner > .label"))
    assert f"answer {final}" in winner.text and "visits" in winner.text
    assert len(browser.find_elements(*_by("#search-tree li.on-path"))) >= 2  # the root and the winner
    assert "4 rollout(s) done" in browser.find_element(*_by("#search-tree h2")).text
    assert browser.find_elements(*_by(".candidates li"))
    browser.save_screenshot(str(shots / "search.png"))
    assert not _console_errors(browser)


def test_two_jobs_compared_on_their_shared_problems(
    browser: Any, viewer: Viewer, jobs_db: tuple[str, int, int], shots: Path
) -> None:
    from selenium.webdriver.support.ui import Select

    db_url = jobs_db[0]
    browser.get(viewer.url + "/jobs/1")
    Select(browser.find_element(*_by("#compare-with"))).select_by_value("3")
    browser.find_element(*_by("form.compare button")).click()
    cells = [td.text for td in browser.find_elements(*_by("#paired tbody td"))]
    with session_scope(db_url) as s:
        report = load_report(session=s, job_ids=[1, 3], max_rounds_limit=10)
    (c,) = report.comparisons  # `rstar report 1 3`'s paired comparison
    assert cells[:5] == [str(x) for x in (c.shared, c.both_right, c.only_first, c.only_second, c.neither)]
    assert float(cells[6]) == pytest.approx(c.p_value, abs=1e-4)
    browser.save_screenshot(str(shots / "compare.png"))


def test_a_running_job_updates_in_place_and_is_cancelled_and_resumed_from_the_page(
    browser: Any, tmp_path: Path, shots: Path
) -> None:
    """A job with no worker stays active: the page follows it live (htmx), and with
    --allow-control its buttons cancel and resume it; without, there are none, and a POST fails."""
    db_url = f"sqlite:///{tmp_path / 'control.sqlite'}"
    env = service_env(db_url, REDIS_URL)
    assert rstar(["db", "upgrade"], env).returncode == 0
    rows = [
        {"id": f"c{j}", "question": r["question"], "answer": r["answer"]} for j, r in enumerate(gsm8k_rows(2))
    ]
    sub = rstar(
        ["submit", str(write_jsonl(tmp_path / "c.jsonl", rows)), "--model-a", "http://127.0.0.1:9",
         "--no-check-models"],
        env,
    )  # fmt: skip
    assert sub.returncode == 0, sub.stderr
    job = int(sub.stdout.strip())
    readonly = Viewer(db_url, tmp_path / "ro.log")
    control = Viewer(db_url, tmp_path / "rw.log", "--allow-control")
    try:
        readonly.wait_ready()
        control.wait_ready()
        # Read-only: no buttons, and the action refused even as htmx would send it.
        browser.get(f"{readonly.url}/jobs/{job}")
        assert browser.find_elements(*_by("button.control")) == []
        refused = httpx.post(f"{readonly.url}/jobs/{job}/cancel", headers={"HX-Request": "true"})
        assert refused.status_code == 403
        assert httpx.post(f"{control.url}/jobs/{job}/cancel").status_code == 403  # not from htmx

        # Live: cancelled from the command line, the open page shows it without a reload.
        browser.execute_script("window.__same_page = true")
        assert _text(browser, "#progress .status") == "active"
        assert rstar(["cancel", str(job)], env).returncode == 0
        wait_until(
            lambda: _text(browser, "#progress .status") == "cancelled",
            timeout=60,
            what="the page to show the cancellation",
        )
        assert browser.execute_script("return window.__same_page") is True

        # Control: resume, then cancel, with the page's buttons.
        browser.get(f"{control.url}/jobs/{job}")
        _click(browser, "button.control")
        wait_until(lambda: _job_status(db_url, job) == "active", timeout=60, what="resume")
        wait_until(lambda: _text(browser, "#progress .status") == "active", timeout=60, what="the page")
        browser.save_screenshot(str(shots / "control.png"))
        _click(browser, "button.control")
        browser.switch_to.alert.accept()  # "Cancel job N?"
        wait_until(lambda: _job_status(db_url, job) == "cancelled", timeout=60, what="cancel")
        # The jobs table has the same buttons.
        browser.get(control.url + "/")
        _click(browser, f'tr.job-row[data-job="{job}"] button.control')
        wait_until(lambda: _job_status(db_url, job) == "active", timeout=60, what="resume from the table")
    finally:
        _leave_page(browser)
        readonly.stop()
        control.stop()
        dispose_all()


def _job_status(db_url: str, job_id: int) -> str:
    with session_scope(db_url) as s:
        job = s.get(Job, job_id)
        assert job is not None
        return job.status


def test_another_host_needs_a_token_which_never_shows(jobs_db: tuple[str, int, int], tmp_path: Path) -> None:
    db_url = jobs_db[0]
    refused = rstar(["ui", "--host", "0.0.0.0", "--port", str(_free_port())], service_env(db_url, REDIS_URL))
    assert refused.returncode == 2
    assert "--token" in refused.stderr
    token = "tok-" + base64.urlsafe_b64encode(os.urandom(12)).decode()
    v = Viewer(db_url, tmp_path / "token.log", "--host", "0.0.0.0", "--token", token)
    try:
        v.wait_ready()
        assert httpx.get(v.url + "/").status_code == 401
        assert httpx.get(v.url + "/", auth=("anyone", "wrong")).status_code == 401
        pages = [
            httpx.get(v.url + path, auth=("anyone", token))
            for path in ("/", "/jobs/3", "/jobs/3/problems/gsm-1", "/jobs/999")
        ]
        assert [p.status_code for p in pages] == [200, 200, 200, 404]
        assert httpx.get(v.url + "/", headers={"Authorization": f"Bearer {token}"}).status_code == 200
        assert not any(token in p.text for p in pages)
    finally:
        log = v.stop()
    assert "GET /jobs/3" in log  # the access log is there, and the token is not in it
    assert token not in log


def test_a_loopback_viewer_answers_only_its_own_names_and_control_only_from_its_pages(
    jobs_db: tuple[str, int, int], tmp_path: Path
) -> None:
    """DNS rebinding: a site whose name resolves to 127.0.0.1 gets nothing from the viewer (its
    requests name that site's host), and a control request from another origin is refused."""
    v = Viewer(jobs_db[0], tmp_path / "rebind.log", "--allow-control", "--allowed-host", "box.lan")
    try:
        v.wait_ready()
        own = f"127.0.0.1:{v.port}"
        hosts = {h: httpx.get(v.url + "/", headers={"Host": h}).status_code
                 for h in (own, f"localhost:{v.port}", "box.lan", f"evil.example:{v.port}")}  # fmt: skip
        assert hosts == {own: 200, f"localhost:{v.port}": 200, "box.lan": 200, f"evil.example:{v.port}": 400}
        press = {"HX-Request": "true", "Host": own}
        # The origin is checked before anything is done (job 999 does not exist: 404 once allowed).
        foreign = httpx.post(v.url + "/jobs/999/cancel", headers={**press, "Origin": "http://evil.example"})
        missing = httpx.post(v.url + "/jobs/999/cancel", headers=press)
        own_page = httpx.post(v.url + "/jobs/999/cancel", headers={**press, "Origin": v.url})
        assert (foreign.status_code, missing.status_code, own_page.status_code) == (403, 403, 404)
    finally:
        v.stop()


def test_filters_sorting_and_pages_agree_with_the_results(jobs_db: tuple[str, int, int]) -> None:
    from fastapi.testclient import TestClient

    from web.app import create_app

    db_url = jobs_db[0]
    client = TestClient(create_app(database_url=db_url))
    results = {r["id"]: r for r in _results(db_url, 3)}

    def listed(query: str) -> list[list[str]]:
        page = client.get(f"/jobs/3?{query}")
        assert page.status_code == 200, page.text
        rows = re.findall(r'<tr class="problem-row.*?</tr>', page.text, re.S)
        return [re.findall(r"<td[^>]*>(?:<a [^>]*>)?(.*?)(?:</a>)?</td>", r, re.S) for r in rows]

    by_a = listed("model=A")
    assert [r[1] for r in by_a] == [i for i, r in results.items() if r["model"] == "A"]
    calls = [int(r[7]) for r in listed("sort=calls&order=desc")]
    assert calls == sorted((r["model_calls"] for r in results.values()), reverse=True)
    pages = [listed(f"per_page=4&page={n}") for n in (1, 2)]
    assert [len(p) for p in pages] == [4, 2]
    assert [r[1] for p in pages for r in p] == list(results)
    two_rounds = listed("rounds=2")
    assert [r[1] for r in two_rounds] == [i for i, r in results.items() if r["rounds_used"] == 2]
    # A page past the end shows the last one: the filtered total is right (one row a page).
    assert listed("rounds=2&per_page=1&page=99") == two_rounds[-1:]
    assert listed("model=A&per_page=1&page=99") == by_a[-1:]
    assert client.get("/jobs/3?outcome=nonsense").status_code == 400
    assert client.get("/jobs/3?page=two").status_code == 400
    assert client.get("/jobs/999").status_code == 404
    assert client.get("/jobs/3/problems/nope").status_code == 404
    plot = client.get("/jobs/3/plots/accuracy.png")
    assert plot.status_code == 200 and plot.content.startswith(b"\x89PNG")


def test_the_accuracy_plot_of_a_job_page_is_the_reports_point_read_from_the_counts(
    jobs_db: tuple[str, int, int],
) -> None:
    url, mutual_job, search_job = jobs_db
    with session_scope(url) as s:
        report = load_report(session=s, job_ids=[mutual_job, search_job], max_rounds_limit=10)
        overviews = {o.id: o for o in browse.job_overviews(session=s, job_ids=[mutual_job, search_job])}
    for point in cost_points(report):
        o = overviews[point.job_id]
        counted = CostPoint.of_counts(
            job_id=o.id, label=f"{o.id} {o.name}", strategy=o.strategy, right=o.right, judged=o.judged,
            sequences=o.sequences, problems=o.problems,
        )  # fmt: skip
        assert counted == point


def test_a_running_or_cancelled_job_is_stated_as_it_is(tmp_path: Path) -> None:
    """The release's finished jobs, made into one running with nothing finished yet and one
    cancelled with nothing answered: no accuracy before anything finished, no full bar for
    cancelled work, no broken image, no "running" step under a cancelled problem."""
    import shutil

    from fastapi.testclient import TestClient
    from sqlalchemy import create_engine, text

    from db import migrate
    from web.app import create_app

    path = tmp_path / "jobs.sqlite"
    shutil.copy(RELEASE_DB, path)
    url = f"sqlite:///{path}"
    migrate.upgrade(url)
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE jobs SET status = 'active', finished_at = NULL WHERE id IN (3, 5)"))
        conn.execute(text("UPDATE problems SET status = 'running', final_answer = NULL WHERE job_id = 3"))
        conn.execute(text("UPDATE jobs SET status = 'cancelled' WHERE id = 5"))
        conn.execute(text("UPDATE problems SET status = 'cancelled', final_answer = NULL WHERE job_id = 5"))
        conn.execute(
            text(
                "UPDATE steps SET status = 'running'"
                " WHERE problem_id IN (SELECT id FROM problems WHERE job_id = 5)"
            )
        )
    engine.dispose()
    client = TestClient(create_app(database_url=url))
    running = client.get("/jobs/3").text
    assert "0/6 problems done" in running and "accuracy so far –" in running and "0.0%" not in running
    cancelled = client.get("/jobs/5").text
    assert "0/6 problems done (6 cancelled)" in cancelled and 'value="0"' in cancelled
    # Its plots are images, whatever the job has done so far.
    for plot in ("/jobs/3/plots/rounds.png", "/jobs/3/plots/accuracy.png"):
        response = client.get(plot)
        assert response.status_code == 200 and response.content.startswith(b"\x89PNG"), plot
    with session_scope(url) as s:
        item = s.scalar(select(Problem.item_id).where(Problem.job_id == 5).limit(1))
    page = client.get(f"/jobs/5/problems/{item}").text
    assert ">cancelled</span>" in page and "status-running" not in page


def test_latex_answers_are_rendered_as_mathematics_with_their_source_a_click_away(
    tmp_path: Path, browser: Any, shots: Path
) -> None:
    """A latex job's answers drawn by the vendored KaTeX as MathML, under the page's unchanged
    Content-Security-Policy (a violation would be a console error); the source shows on a click;
    an answer that is markup or a link stays text; a number job's answers stay text."""
    from sqlalchemy import create_engine, text

    path = tmp_path / "jobs.sqlite"
    shutil.copy(RELEASE_DB, path)
    url = f"sqlite:///{path}"
    migrate.upgrade(url)
    hostile = '\\href{javascript:alert(1)}{x}<img src=x onerror="document.title=1">'
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE jobs SET problem_type = 'latex' WHERE id = 1"))
        first, second = conn.execute(
            text("SELECT id FROM problems WHERE job_id = 1 ORDER BY id LIMIT 2")
        ).scalars()
        conn.execute(
            text(
                "UPDATE problems SET final_answer = :a, reference_answer = :r, correct = FALSE WHERE id = :id"
            ),
            [
                {"a": "\\frac{\\sqrt{2}}{2}", "r": "\\left( 3, \\frac{\\pi}{2} \\right)", "id": first},
                {"a": hostile, "r": "x^2", "id": second},
            ],
        )
        item = conn.execute(text("SELECT item_id FROM problems WHERE id = :id"), {"id": first}).scalar()
    engine.dispose()
    viewer = Viewer(url, tmp_path / "ui.log")
    viewer.wait_ready()
    try:
        _leave_page(browser)  # what the module's earlier tests left in the console is theirs
        browser.get(f"{viewer.url}/jobs/1")
        wait_until(lambda: len(browser.find_elements(*_by("[data-rendered]"))) >= 4, timeout=30, what="KaTeX")
        rendered = browser.find_elements(*_by('.math[data-rendered="mathml"] math'))
        assert len(rendered) >= 3  # two answers and a reference drawn as MathML
        # The hostile answer: KaTeX draws \\href without its link (trust is off), the tag as text.
        assert not browser.find_elements(*_by("table#problems a[href^='javascript'], table#problems math a"))
        assert not browser.find_elements(*_by("table#problems img")) and browser.title != "1"
        assert _console_errors(browser) == []
        browser.save_screenshot(str(shots / "latex-job.png"))
        browser.get(f"{viewer.url}/jobs/1/problems/{item}")
        wait_until(
            lambda: bool(browser.find_elements(*_by("#final-answer [data-rendered]"))),
            timeout=30,
            what="KaTeX",
        )
        assert browser.find_elements(*_by("#final-answer math"))
        source = browser.find_element(*_by("#final-answer details.tex code"))
        assert not source.is_displayed()
        _click(browser, "#final-answer details.tex summary")
        wait_until(source.is_displayed, timeout=10, what="the source")
        assert source.text == "\\frac{\\sqrt{2}}{2}"
        assert _console_errors(browser) == []
        browser.get(f"{viewer.url}/jobs/2")  # a number job: text, as before, and no KaTeX loaded
        assert not browser.find_elements(*_by("details.tex, script[src*=katex]"))
        browser.get(f"{viewer.url}/compare?a=1&b=2")  # job 1's answers drawn inside their links
        wait_until(lambda: bool(browser.find_elements(*_by("a .math math"))), timeout=30, what="KaTeX")
        assert _console_errors(browser) == []
    finally:
        _leave_page(browser)
        viewer.stop()
