"""What rstar jobs of versions 1-3 asked and chose, recorded on scripted searches, so that today's
code is held to replay them exactly (`tests/data/rstar_replay_v1_v3.json`,
`test_rstar.py::test_jobs_of_earlier_versions_replay_exactly_as_they_ran`).

The file was recorded with commit 5bc5d43's code (the last of rstar-v3), from its checkout:

    cd OLD_CHECKOUT && PYTHONPATH=. python /path/to/tests/domain/rstar_replay.py > rstar_replay_v1_v3.json

It needs only what every version had: `RStarStrategy`, its `params` and `report`, and the
in-memory driver.
"""

from __future__ import annotations

import hashlib
import json
import sys
from typing import Any

from rstar.strategies.mcts.strategy import RStarStrategy
from rstar.strategies.mcts.tree import Kind
from rstar.types import ModelRequest
from tests.domain.memory_driver import MemoryRun

VERSIONS = ("rstar-v1", "rstar-v2", "rstar-v3")
QUESTIONS = (
    "Tom has 2 apples and buys 3 more. How many apples does he have now?",
    "A shop sells 4 pens for $3. Ann buys 12 pens and pays with $20. How much change does she get?",
)
PARAMS = {
    "rollouts": 6,
    "max_depth": 3,
    "a1_samples": 2,
    "votes": 3,
    "last_votes": 4,
    "subquestions": 2,
    "cuts": 3,
    "a5": True,
}


def _pick(*parts: object) -> int:
    return int.from_bytes(hashlib.blake2b(repr(parts).encode(), digest_size=4).digest(), "big")


def answerer(spec: Any, request: ModelRequest) -> list[str]:
    """Replies that depend on the step and the prompt, with answers that disagree, so that every
    action and the discriminator run."""
    out = []
    for i in range(request.n):
        h = _pick(spec.key, i, request.messages[-1].content[-60:])
        a = 5 + h % 3
        if spec.kind == Kind.A1:
            out.append(f"Step 1: add them: {a}." + (f" The answer is: {a}" if h % 4 == 0 else ""))
        elif spec.kind == Kind.A3_QUESTION:
            out.append(
                "Sub-question 1: Now we can answer the question: how many?"
                if h % 3 == 0
                else f"Sub-question 1: How many in part {h % 5}?"
            )
        elif spec.kind == Kind.A5:
            out.append("Condition 1: some. Condition 2: more. Question: how many?")
        elif spec.kind == Kind.COMPLETE:
            out.append(f"Then it is {a}.\nThe answer is \\boxed{{{a}}}")
        else:
            out.append(f"Step 1: work.\nStep 2: more work.\nThe answer is: {a}")
    return out


def _digest(request: ModelRequest) -> str:
    messages = [[m.role, m.content] for m in request.messages]
    return hashlib.sha256(json.dumps(messages).encode()).hexdigest()


def record(version: str, stored: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Each question's search under `version`: every request, the candidates, the verdicts and
    the selection. `stored`: the job's stored parameters (default: what a job of that version
    stored at submit, `params`)."""
    runs = []
    for q in QUESTIONS:
        params = stored or RStarStrategy({**PARAMS, "prompt_version": version}).params
        strategy = RStarStrategy(params)
        run = MemoryRun(strategy, q)
        sel = run.run(answerer)
        assert sel is not None
        rep = strategy.report(run.state())
        tree = rep.tree
        runs.append(
            {
                "question": q,
                "params": params,
                "requests": [
                    {
                        "key": s.key,
                        "kind": str(s.kind),
                        "model": s.model,
                        "round": s.round,
                        "messages_sha256": _digest(r),
                        "n": r.n,
                        "max_tokens": r.max_tokens,
                        "stop": list(r.stop),
                        "temperature": r.temperature,
                        "top_p": r.top_p,
                        "top_k": r.top_k,
                        "seed": r.seed,
                    }
                    for s, r in run.requests
                ],
                "selection": {
                    "answer": sel.answer,
                    "reason": sel.reason,
                    "rounds": sel.rounds_used,
                    "node": tree.nodes[sel.output_id].name if sel.output_id else None,
                },
                "candidates": [[tree.nodes[c.node].name, c.answer, c.reward] for c in rep.candidates],
                "verdicts": None
                if rep.verdicts is None
                else sorted(
                    [tree.nodes[v.node].name, v.completions, v.agreeing, v.consistent]
                    for v in rep.verdicts.values()
                ),
                "prefixes": {
                    tree.nodes[c.node].name: strategy.prefixes(tree, c.node) for c in rep.candidates
                },
            }
        )
    return runs


if __name__ == "__main__":
    json.dump({v: record(v) for v in VERSIONS}, sys.stdout, indent=1, sort_keys=True)
