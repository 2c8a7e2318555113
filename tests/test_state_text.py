"""The solutions and reviews `load_state` reads render for the next prompt exactly as before the
rendering moved from `db/` into the views (the literals below are what `load_state` produced then)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import event, select

from db.jobs import create_job
from db.models import Output, Problem, Step
from db.session import session_scope
from db.state import OutputCache, OutputMemo, load_state
from rstar.types import ProblemInput

QUESTION = "Tom has 3 apples and buys 4 more. How many apples does he have?"


def _texts(url: str) -> dict[str, str]:
    """Step key -> the rendered text of its output, for one problem whose solutions and reviews are
    parsed, unparsed, and (for the last of each) without a reply text."""
    models = [{"name": "A", "url": "http://a"}, {"name": "B", "url": "http://b"}]
    with session_scope(url) as s:
        job, _ = create_job(
            session=s,
            name="texts",
            strategy="mutual",
            params={},
            models=models,
            source=None,
            problems=[ProblemInput("p1", 1, QUESTION, None, None)],
        )
        problem_id = s.scalar(select(Problem.id).where(Problem.job_id == job.id))

        def output(
            key: str,
            model: str,
            reply: str | None,
            payload: dict[str, Any],
            *,
            answer: str | None = None,
            parent: int | None = None,
            parse_error: str | None = None,
        ) -> int:
            kind = key.split(".")[1]
            step = Step(
                problem_id=problem_id, key=key, kind=kind, model=model, round=int(key[1]), status="done"
            )
            s.add(step)
            s.flush()
            out = Output(
                problem_id=problem_id,
                step_id=step.id,
                round=step.round,
                model=model,
                kind=kind,
                parent_id=parent,
                stored_text=reply,
                payload=payload,
                answer=answer,
                parse_error=parse_error,
            )
            s.add(out)
            s.flush()
            return out.id

        sol_a = output(
            "r1.generate.A",
            "A",
            '{"steps": ...}',
            {"steps": ["Add 3 and 4.", "3 + 4 = 7."], "answer_raw": "7", "structured": True},
            answer="7",
        )
        sol_b = output(
            "r1.generate.B",
            "B",
            "x" * 5000,
            {"steps": [], "answer_raw": None, "structured": False},
            parse_error="no final answer",
        )
        sol_c = output("r2.refine.A", "A", None, {"steps": [], "answer_raw": None, "structured": False})

        def review(
            verdict: str, scores: list[int | None], issues: list[Any], suggested: str | None, structured: bool
        ) -> dict[str, Any]:
            return {
                "verdict": verdict,
                "scores": scores,
                "issues": issues,
                "suggested_answer": suggested,
                "structured": structured,
            }

        issues = [{"step": 2, "description": "3 + 4 is 7, not 8"}, {"step": None, "description": "no unit"}]
        output(
            "r1.review.A", "A", "{...}", review("incorrect", [4, None, 2], issues, "7", True), parent=sol_b
        )
        output(
            "r1.review.B",
            "B",
            "Looks fine, I think.",
            review("uncertain", [None] * 3, [], None, False),
            parent=sol_a,
        )
        output("r2.review.B", "B", None, review("correct", [None] * 3, [], None, False), parent=sol_c)
    with session_scope(url) as s:
        state = load_state(session=s, problem_id=problem_id, question=QUESTION, models=models)
        # Rendered inside the transaction: the outputs are read on first use.
        return {key: view.text for key, view in (*state.solutions.items(), *state.reviews.items())}


def test_views_render_as_load_state_did(migrated: str) -> None:
    assert _texts(migrated) == {
        "r1.generate.A": "Step 1: Add 3 and 4.\nStep 2: 3 + 4 = 7.\nFinal answer: 7",
        "r1.generate.B": "x" * 4000,
        "r1.review.A": (
            "Verdict: incorrect\n"
            "Scores: logical consistency 4/5, calculation accuracy ?/5, step completeness 2/5\n"
            "- step 2: 3 + 4 is 7, not 8\n"
            "- no unit\n"
            "Reviewer's answer: 7"
        ),
        "r1.review.B": "Looks fine, I think.",
        "r2.refine.A": "(empty reply)",
        "r2.review.B": "(empty review)",
    }


def test_a_state_read_with_an_earlier_reads_outputs_equals_a_fresh_read(migrated: str) -> None:
    """`OutputCache`: a second read asks only for the steps the first did not see done, and gives
    the same outputs in the same order as a read from scratch; what a read saw of a transaction
    that rolled back (read through a fork) is not kept."""
    models = [{"name": "A", "url": "http://a"}]
    with session_scope(migrated) as s:
        job, _ = create_job(
            session=s, name="cache", strategy="mutual", params={}, models=models, source=None,
            problems=[ProblemInput("p1", 1, QUESTION, None, None)],
        )  # fmt: skip
        problem_id = s.scalar(select(Problem.id).where(Problem.job_id == job.id))

    def add(key: str, status: str = "done", answers: tuple[str, ...] = ("7",)) -> None:
        with session_scope(migrated) as s:
            step = Step(problem_id=problem_id, key=key, kind="generate", model="A", round=1, status=status)
            s.add(step)
            s.flush()
            for seq, answer in enumerate(answers if status == "done" else ()):
                s.add(Output(problem_id=problem_id, step_id=step.id, round=1, model="A", kind="generate",
                             seq=seq, stored_text=answer, payload={}, answer=answer))  # fmt: skip

    def read(cache: OutputCache | None) -> list[tuple[str, int, str | None]]:
        with session_scope(migrated) as s:
            state = load_state(
                session=s, problem_id=problem_id, question=QUESTION, models=models, cache=cache
            )
            return [(k, o.id, o.answer) for k, o in state.outputs.items()]

    add("r1.generate.A", answers=("7", "8"))
    add("r1.generate.B", status="running")
    cache = OutputCache()
    first = read(cache)
    assert [a for _, _, a in first] == ["7", "8"]
    add("r1.generate.C", answers=("9",))
    with session_scope(migrated) as s:  # B finishes
        step = s.scalar(select(Step).where(Step.problem_id == problem_id, Step.key == "r1.generate.B"))
        assert step is not None
        step.status = "done"
        s.add(Output(problem_id=problem_id, step_id=step.id, round=1, model="A", kind="generate", seq=0,
                     stored_text="6", payload={}, answer="6"))  # fmt: skip
    assert read(cache) == read(None)
    assert [a for _, _, a in read(cache)] == ["7", "8", "9", "6"]

    # A read inside a transaction that writes and then rolls back, through a fork.
    fork = cache.fork()
    with session_scope(migrated) as s:
        step = Step(
            problem_id=problem_id, key="r1.generate.D", kind="generate", model="A", round=1, status="done"
        )
        s.add(step)
        s.flush()
        s.add(Output(problem_id=problem_id, step_id=step.id, round=1, model="A", kind="generate", seq=0,
                     stored_text="5", payload={}, answer="5"))  # fmt: skip
        s.flush()
        state = load_state(session=s, problem_id=problem_id, question=QUESTION, models=models, cache=fork)
        assert [o.answer for o in state.outputs.values()][-1] == "5"
        s.rollback()
    assert step.id in fork.by_step and step.id not in cache.by_step
    assert read(cache) == read(None)


def test_outputs_kept_between_task_runs_are_those_of_committed_reads_and_stay_bounded(migrated: str) -> None:
    """`OutputMemo`: what one run read of a problem is recalled by the next run in the process
    (which then reads only what is new, and sees what a fresh read sees); kept per problem and
    question and per database; the least recently used problems go first past the bound."""
    models = [{"name": "A", "url": "http://a"}]
    memo = OutputMemo(max_outputs=3)
    with session_scope(migrated) as s:
        job, _ = create_job(
            session=s, name="memo", strategy="mutual", params={}, models=models, source=None,
            problems=[ProblemInput("p1", 1, QUESTION, None, None),
                      ProblemInput("p2", 2, "Other?", None, None)],
        )  # fmt: skip
        p1, p2 = s.scalars(select(Problem.id).where(Problem.job_id == job.id).order_by(Problem.id)).all()

    def add(problem_id: int, key: str, answers: tuple[str, ...]) -> None:
        with session_scope(migrated) as s:
            step = Step(problem_id=problem_id, key=key, kind="generate", model="A", round=1, status="done")
            s.add(step)
            s.flush()
            for seq, answer in enumerate(answers):
                s.add(Output(problem_id=problem_id, step_id=step.id, round=1, model="A", kind="generate",
                             seq=seq, stored_text=answer, payload={"n": seq}, answer=answer))  # fmt: skip

    def run(problem_id: int, question: str) -> tuple[list[str | None], int]:
        """A task run's read: recalled, read, remembered; the outputs' answers and the statements."""
        with session_scope(migrated) as s:
            statements = 0

            def count(*_: object) -> None:
                nonlocal statements
                statements += 1

            event.listen(s.connection(), "before_cursor_execute", count)
            cache = memo.recall(s, problem_id, question)
            state = load_state(
                session=s, problem_id=problem_id, question=question, models=models, cache=cache
            )
            answers = [o.answer for o in state.outputs.values()]
            event.remove(s.connection(), "before_cursor_execute", count)
            memo.remember(s, problem_id, question, cache)
        return answers, statements

    def fresh(problem_id: int, question: str) -> list[str | None]:
        with session_scope(migrated) as s:
            state = load_state(session=s, problem_id=problem_id, question=question, models=models)
            return [o.answer for o in state.outputs.values()]

    add(p1, "r1.generate.A", ("7", "8"))
    assert run(p1, QUESTION) == (["7", "8"], 2)  # steps, outputs
    add(p1, "r1.generate.B", ("9",))
    assert run(p1, QUESTION) == (["7", "8", "9"], 2)  # steps, the new step's outputs only
    assert run(p1, QUESTION) == (["7", "8", "9"], 1)  # nothing new: the steps only
    assert run(p1, QUESTION)[0] == fresh(p1, QUESTION)
    # Another question under the same id is another problem (a database made again): read whole.
    assert memo.size == 3
    assert run(p1, "Something else?")[1] == 2
    # The bound: p1's three outputs under the other key, then p2's one push out the oldest.
    add(p2, "r1.generate.A", ("1",))
    assert run(p2, "Other?") == (["1"], 2)
    assert memo.size <= 3
    assert run(p1, QUESTION)[1] == 2  # it was dropped: read whole again
