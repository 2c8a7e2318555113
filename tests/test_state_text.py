"""The solutions and reviews `load_state` reads render for the next prompt exactly as before the
rendering moved from `db/` into the views (the literals below are what `load_state` produced then)."""

from __future__ import annotations

from sqlalchemy import select

from db.jobs import create_job
from db.models import ModelCall, Problem, Review, Solution, Step
from db.session import session_scope
from db.state import load_state
from rstar.types import ProblemInput

QUESTION = "Tom has 3 apples and buys 4 more. How many apples does he have?"


def _texts(url: str) -> dict[str, str]:
    """Step key -> the rendered text of its output, for one problem whose solutions and reviews are
    parsed, unparsed, and (for the last of each) without a recorded call."""
    with session_scope(url) as s:
        job, _ = create_job(
            session=s,
            name="texts",
            strategy="mutual",
            params={},
            model_a_url="http://a",
            model_b_url="http://b",
            source=None,
            problems=[ProblemInput("p1", 1, QUESTION, None, None)],
            first_steps=(),
        )
        problem_id = s.scalar(select(Problem.id).where(Problem.job_id == job.id))

        def output_step(key: str, kind: str, role: str, reply: str | None) -> tuple[int, int | None]:
            step = Step(
                problem_id=problem_id, key=key, kind=kind, role=role, round=int(key[1]), status="done"
            )
            s.add(step)
            s.flush()
            if reply is None:
                return step.id, None
            call = ModelCall(
                step_id=step.id,
                problem_id=problem_id,
                attempt=1,
                endpoint=f"http://{role.lower()}",
                request={},
                response_text=reply,
                outcome="ok",
            )
            s.add(call)
            s.flush()
            return step.id, call.id

        sol_a = Solution(problem_id=problem_id, round=1, author="A", kind="generate", structured=True)
        sol_a.step_id, sol_a.model_call_id = output_step("r1.generate.A", "generate", "A", '{"steps": ...}')
        sol_a.steps, sol_a.answer_raw, sol_a.answer = ["Add 3 and 4.", "3 + 4 = 7."], "7", "7"
        sol_b = Solution(problem_id=problem_id, round=1, author="B", kind="generate", structured=False)
        sol_b.step_id, sol_b.model_call_id = output_step("r1.generate.B", "generate", "B", "x" * 5000)
        sol_b.steps, sol_b.parse_error = [], "no final answer"
        sol_c = Solution(problem_id=problem_id, round=2, author="A", kind="refine", structured=False)
        sol_c.step_id, sol_c.model_call_id = output_step("r2.refine.A", "refine", "A", None)
        sol_c.steps = []
        s.add_all([sol_a, sol_b, sol_c])
        s.flush()
        rev_a = Review(
            problem_id=problem_id,
            round=1,
            reviewer="A",
            target_solution_id=sol_b.id,
            verdict="incorrect",
            logical_consistency=4,
            calculation_accuracy=None,
            step_completeness=2,
            issues=[
                {"step": 2, "description": "3 + 4 is 7, not 8"},
                {"step": None, "description": "no unit"},
            ],
            suggested_answer="7",
            structured=True,
        )
        rev_a.step_id, rev_a.model_call_id = output_step("r1.review.A", "review", "A", "{...}")
        rev_b = Review(
            problem_id=problem_id,
            round=1,
            reviewer="B",
            target_solution_id=sol_a.id,
            verdict="uncertain",
            issues=[],
            structured=False,
        )
        rev_b.step_id, rev_b.model_call_id = output_step("r1.review.B", "review", "B", "Looks fine, I think.")
        rev_c = Review(
            problem_id=problem_id,
            round=2,
            reviewer="B",
            target_solution_id=sol_c.id,
            verdict="correct",
            issues=[],
            structured=False,
        )
        rev_c.step_id, rev_c.model_call_id = output_step("r2.review.B", "review", "B", None)
        s.add_all([rev_a, rev_b, rev_c])
    with session_scope(url) as s:
        state = load_state(session=s, problem_id=problem_id, question=QUESTION)
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
