"""(Re)computes the grading table's `authors` and `math_verify` columns. Run by hand, not by the tests.

    .venv/bin/python tests/data/grading/decide.py --authors-python /tmp/rstar-authors-venv/bin/python

`authors`: how the rStar authors' evaluator decides a row (microsoft/rStar, branch
rStar-mutualreasoning, eval_src/Evaluator.py; number rows with GSM8KEvaluator, which GSM8KHARD and
MULTIARITH alias and SVAMPEvaluator repeats; latex rows with MATHEvaluator, whose check is
eval_src/toolkit_for_MATH; yes-no rows with STGEvaluator; choice rows null: they have no grader for
it). A row is judged as their pipeline judges a problem: `extract_answer_from_gold_solution` on the
reference (run_src/do_generate.py), `extract_answer_from_model_completion` on the answer, then
`check_answers_equiv(model_answer, gold_answer)` (eval_src/do_eval.py). Their code is not in this
repository: `git archive` takes eval_src from a clone of theirs (--rstar-git) into a temporary
directory, and a second interpreter (--authors-python) imports it there, because their MATH check
needs sympy's LaTeX parser (antlr4-python3-runtime 4.11) where math-verify needs 4.13, and their
yes/no check needs fuzzywuzzy. The README beside this file says how that interpreter was made.

`math_verify`: plain math-verify (its default extraction, nothing of ours) on the raw strings,
`verify(parse(reference), parse(answer))` or the same with the two swapped. A latex answer with no
math delimiter is given as `$answer$`, the form math-verify's README uses: its default extraction
reads undelimited LaTeX ("\\sqrt{117}", "\\pi") as nothing, which would make the column say how
the answer was written, not what it is. Null for yes-no and choice, where its default extraction
reads no word and no bare letter ("B" against "B" is False).

Without --check the four files are rewritten with the new columns (the other fields untouched); with
it nothing is written and the exit status is 1 when a column would change. Either way it prints how
many rows agree, the rows where our type now decides otherwise than `equal`, and the rows that
differ from a column without a note.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import signal
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
TYPES = ("number", "latex", "yes-no", "choice")
FIELDS = ("reference", "answer", "equal", "authors", "math_verify", "note")
BRANCH = "rStar-mutualreasoning"
EVALUATORS = {"number": "GSM8KEvaluator", "latex": "MATHEvaluator", "yes-no": "STGEvaluator"}
TIMEOUT_S = 20


def read_rows(kind: str) -> list[dict[str, Any]]:
    lines = (HERE / f"{kind}.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def write_rows(kind: str, rows: list[dict[str, Any]]) -> None:
    text = "".join(json.dumps({f: row.get(f) for f in FIELDS}, ensure_ascii=False) + "\n" for row in rows)
    (HERE / f"{kind}.jsonl").write_text(text, encoding="utf-8")


# -- the authors' column: a worker in the interpreter that has their dependencies ----------------


class _OutOfTime(Exception):
    pass


def _alarm(signum: int, frame: Any) -> None:
    raise _OutOfTime


def authors_worker(eval_root: str) -> None:
    """Reads [{"kind", "reference", "answer"}] on stdin, writes their decisions (true/false/null)."""
    sys.path.insert(0, eval_root)
    with contextlib.redirect_stdout(sys.stderr):  # their code prints; stdout carries the reply
        import eval_src.Evaluator as theirs

        evaluators = {kind: getattr(theirs, name)() for kind, name in EVALUATORS.items()}
        signal.signal(signal.SIGALRM, _alarm)
        decisions: list[bool | None] = []
        for row in json.load(sys.stdin):
            evaluator = evaluators.get(row["kind"])
            if evaluator is None:
                decisions.append(None)
                continue
            signal.alarm(TIMEOUT_S)
            try:
                gold = evaluator.extract_answer_from_gold_solution(row["reference"])
                answer = evaluator.extract_answer_from_model_completion(row["answer"])
                decisions.append(bool(evaluator.check_answers_equiv(answer, gold)))
            except _OutOfTime:
                print(f"out of time: {row['answer']!r}")
                decisions.append(False)
            except Exception as error:  # do_eval's vote skips a completion that raises: not correct
                print(f"raised {error!r}: {row['answer']!r}")
                decisions.append(False)
            finally:
                signal.alarm(0)
    json.dump(decisions, sys.stdout)


def authors_column(rows: list[dict[str, Any]], python: str, rstar_git: str) -> tuple[list[bool | None], str]:
    commit = subprocess.run(
        ["git", "-C", rstar_git, "rev-parse", BRANCH], check=True, capture_output=True, text=True
    ).stdout.strip()
    archive = subprocess.run(
        ["git", "-C", rstar_git, "archive", commit, "eval_src"], check=True, capture_output=True
    )
    with tempfile.TemporaryDirectory(prefix="rstar-eval-") as root:
        with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
            tar.extractall(root, filter="data")
        reply = subprocess.run(
            [python, str(Path(__file__).resolve()), "--authors-worker", root],
            input=json.dumps(rows),
            check=True,
            capture_output=True,
            text=True,
        )
    return json.loads(reply.stdout), commit


# -- plain math-verify, here (the main thread: its own time limits work) --------------------------


_DELIMITED = ("$", "\\(", "\\[", "\\boxed")


def math_verify_decision(kind: str, reference: str, answer: str) -> bool:
    from math_verify import parse, verify

    if kind == "latex" and not any(mark in answer.replace("\\$", "") for mark in _DELIMITED):
        answer = f"${answer}$"  # as math-verify's README gives LaTeX: bare, "\\sqrt{117}" reads as nothing
    try:
        gold, given = parse(reference), parse(answer)
        return bool(verify(gold, given) or verify(given, gold))
    except Exception:
        return False


# -- the table --------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--authors-python", help="an interpreter with sympy, antlr4 4.11, pyparsing, fuzzywuzzy"
    )
    parser.add_argument(
        "--rstar-git", default="/work/.mirror/microsoft+rStar/repo", help="a clone of microsoft/rStar"
    )
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a column would change")
    parser.add_argument("--authors-worker", metavar="EVAL_ROOT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.authors_worker:
        authors_worker(args.authors_worker)
        return 0
    if not args.authors_python:
        parser.error("--authors-python is needed (see the README beside this script)")

    sys.path.insert(0, str(HERE.parents[2]))
    from rstar.problem_types import get_problem_type

    tables = {kind: read_rows(kind) for kind in TYPES}
    flat = [{"kind": kind, **row} for kind in TYPES for row in tables[kind]]
    authors, commit = authors_column(flat, args.authors_python, args.rstar_git)
    print(f"the authors' evaluator: microsoft/rStar {BRANCH} at {commit}")
    changed = 0
    at = 0
    for kind in TYPES:
        ours = get_problem_type(kind)
        agree = {"authors": [0, 0], "math_verify": [0, 0]}
        for line, row in enumerate(tables[kind], 1):
            new = {
                "authors": authors[at],
                "math_verify": math_verify_decision(kind, row["reference"], row["answer"])
                if kind in ("number", "latex")
                else None,
            }
            at += 1
            for column, value in new.items():
                if row.get(column) != value:
                    changed += 1
                    print(f"{kind}:{line} {column}: {row.get(column)} -> {value}  answer {row['answer']!r}")
                row[column] = value
                if value is not None:
                    agree[column][0] += value == row["equal"]
                    agree[column][1] += 1
            decided = ours.equal(ours.reference(row["reference"]), row["answer"])
            if decided != row["equal"]:
                print(
                    f"{kind}:{line} our type decides {decided}, the table {row['equal']}: {row['answer']!r}"
                )
            differs = any(row[c] is not None and row[c] != row["equal"] for c in ("authors", "math_verify"))
            if differs and not row.get("note", "").strip():
                print(f"{kind}:{line} differs from a column and has no note: {row['answer']!r}")
        summary = ", ".join(
            f"{column} {n}/{total}" if total else f"{column} -" for column, (n, total) in agree.items()
        )
        print(f"{kind}: {len(tables[kind])} rows; agree with {summary}")
        if not args.check:
            write_rows(kind, tables[kind])
    if args.check and changed:
        print(f"{changed} values would change")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
