"""The README's first command for real: `rstar demo` with SmolLM2-135M behind two llama-cpp-python
servers, a real Celery worker, Flower, Redis and SQLite. Slow (a minute or two): it is the proof that
the whole stack runs with real model output."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from db.models import ModelCall, Output, Problem, Selection, Step
from db.session import session_scope
from tests.support import REPO, require_real_model, rstar, service_env


@pytest.mark.realmodel
def test_demo_solves_three_problems_with_real_models(redis_url: str, tmp_path: Path) -> None:
    require_real_model()
    db_url = f"sqlite:///{tmp_path}/demo.db"
    env = service_env(db_url, redis_url)
    run = rstar(
        ["demo", "--problems", "3", "--max-rounds", "2", "--database-url", db_url, "--timeout", "1200"],
        env,
        timeout=1500,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "accuracy" in run.stdout and "Flower: http://127.0.0.1:" in run.stdout

    with session_scope(db_url) as s:
        problems = s.scalars(select(Problem)).all()
        assert len(problems) == 3
        for p in problems:
            assert p.status in ("answered", "failed")
            if p.status == "failed":
                assert p.error  # failed with a reason
            else:
                assert s.scalar(select(Selection).where(Selection.problem_id == p.id)) is not None
        calls = s.scalars(select(ModelCall)).all()
        ok = [c for c in calls if c.outcome == "ok"]
        assert ok, "no successful model call"
        for c in ok:
            # The model's own text, as the llama.cpp server returned it.
            assert c.server_kind == "llama-cpp"
            assert c.response is not None and str(c.response.get("id", "")).startswith("chatcmpl-")
            assert c.response["choices"][0]["message"]["content"] == c.response_text
            assert c.response_text and c.completion_tokens and c.completion_tokens > 0
            assert c.request["response_format"]["type"] == "json_object"
        assert len({c.response_text for c in ok}) > 1  # not one canned reply
        done_steps = s.scalars(select(Step).where(Step.status == "done", Step.kind != "select")).all()
        outputs = len(s.scalars(select(Output)).all())
        assert outputs == len(done_steps)  # every finished model step left its solution or review
    assert (REPO / "cli" / "data" / "gsm8k_sample.jsonl").exists()
