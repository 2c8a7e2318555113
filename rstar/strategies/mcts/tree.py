"""The search tree, rebuilt from a problem's outputs: every node is one output row whose parent
is its parent node (a sub-question's answer hangs under its sub-question's output, which is not
a node of its own). Pure: the strategy rebuilds it from `ProblemState.outputs` on every plan.

Node kinds follow the paper's actions (Qi et al., 2024, section 3.1; microsoft/rStar, branch
rStar-mutualreasoning, run_src/MCTS_for_reasoning.py, `Reasoning_MCTS_Node._create_children`):
  a1_step      A1, one next step            (children: A1, A2)
  a2_answer    A2, the remaining steps      (terminal)
  a3_answer    A3, a sub-question + answer  (children: A1, A2, A3, A4; terminal when the
                                             sub-question is the question itself)
  a4_reanswer  A4, the last sub-question answered again (children: A1, A2, A3)
  a5_rephrase  A5, the question as conditions (root only; children: A1, A2, A3)
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cached_property
from typing import Any

from rstar.strategies.base import OutputView
from rstar.strategies.mcts import prompts

_ANSWER_CUE = re.compile(r"\bthe answer is\b", re.IGNORECASE)

ROOT = 0
"""The root's node id (the question; no output). Other nodes are their output's id."""


class Kind(StrEnum):
    A1 = "a1_step"
    A2 = "a2_answer"
    A3_QUESTION = "a3_question"
    """A sub-question on its own: the first half of A3, not a node."""
    A3 = "a3_answer"
    A4 = "a4_reanswer"
    A5 = "a5_rephrase"
    COMPLETE = "rc_complete"
    """The discriminator's completion of a cut trajectory."""


NODE_KINDS = frozenset({Kind.A1, Kind.A2, Kind.A3, Kind.A4, Kind.A5})
NODE_TITLES: dict[str, str] = {
    Kind.A1: "A1 step",
    Kind.A2: "A2 answer",
    Kind.A3: "A3 sub-question",
    Kind.A4: "A4 re-answer",
    Kind.A5: "A5 rephrase",
}
"""How `rstar show` and the viewer name a node's action."""
VOTE_KINDS = frozenset({Kind.A2, Kind.A3, Kind.A4})
"""Nodes made of several samples: their answer is the majority's, their value its share."""

# Which actions expand a node, by its kind (None: the root).
ACTIONS: dict[str | None, tuple[Kind, ...]] = {
    None: (Kind.A1, Kind.A2, Kind.A3_QUESTION, Kind.A5),
    Kind.A5: (Kind.A1, Kind.A2, Kind.A3_QUESTION),
    Kind.A3: (Kind.A1, Kind.A2, Kind.A3_QUESTION, Kind.A4),
    Kind.A4: (Kind.A1, Kind.A2, Kind.A3_QUESTION),
    Kind.A1: (Kind.A1, Kind.A2),
    Kind.A2: (),
}


# Names: a node's stable identity, its path of actions from the root ("0", "0.s1", "0.s1.q0"):
# s<j> the j-th A1 step, d0 the A2 answer, q<j> the answer to the j-th sub-question, r0 the A4
# re-answer, p0 the A5 rephrasing. Step keys are built from names, not from database ids, so a
# search asks for the same steps, with the same seeds, whatever order its outputs were written in
# (a re-submitted job reuses every call: `submit --resume-from`; the benchmark's two drivers
# search alike). Keys: "x<name>:<a1|a2|a2L|a3q|a4|a5>" expands a node, "q<name>:a3" answers a
# sub-question, "d<name>:c<i>" completes a candidate cut at point i.
ROOT_NAME = "0"
CODES = {Kind.A1: "s", Kind.A2: "d", Kind.A3: "q", Kind.A4: "r", Kind.A5: "p"}
_KEY = re.compile(r"^(?P<what>[xqd])(?P<name>0(?:\.[a-z]\d+)*):(?P<rest>[A-Za-z0-9]+)$")


def parse_key(key: str) -> tuple[str, str, str]:
    """("x", "0.s1", "a2") for "x0.s1:a2"; ValueError for a key rstar does not make."""
    m = _KEY.match(key)
    if m is None:
        raise ValueError(f"rstar has no step {key!r}")
    return m["what"], m["name"], m["rest"]


def expand_key(name: str, suffix: str) -> str:
    return f"x{name}:{suffix}"


def subanswer_key(subquestion: str) -> str:
    return f"q{subquestion}:a3"


def completion_key(name: str, cut: int) -> str:
    return f"d{name}:c{cut}"


def parent_name(name: str) -> str | None:
    return name.rsplit(".", 1)[0] if "." in name else None


@dataclass(frozen=True)
class Node:
    id: int
    """Its output's id (ROOT for the root)."""
    kind: str | None
    """None for the root."""
    parent: int | None
    depth: int
    answer: str | None = None
    value: float | None = None
    """A vote node's majority share (its reward when terminal)."""
    text: str = ""
    """What it adds to the trajectory (a step, a sub-question's answer, the conditions)."""
    subquestion: str | None = None
    """An A3 node's sub-question (A4: the one it answers again)."""
    terminal_subquestion: bool = False
    output: OutputView | None = None
    children: list[int] = field(default_factory=list)
    """By name, so the order does not depend on which output was written first."""
    name: str = ROOT_NAME


def is_terminal_subquestion(subquestion: str, question: str) -> bool:
    """The sub-question is the question itself: it says so, or it repeats the question's last
    sentence (run_src/rstar_utils.py, `reach_terminal_subquestion`)."""
    sub = subquestion.lower()
    if prompts.TERMINAL_SUBQUESTION in sub:
        return True
    last = question.strip().rstrip("?").split(".")[-1].strip().lower()
    return len(last) > 10 and last in sub


def _name_of(out: OutputView) -> str | None:
    """The name of the node (or, for A3's first half, the sub-question) an output is."""
    try:
        what, name, _rest = parse_key(out.step_key)
    except ValueError:
        return None
    if out.kind == Kind.A3_QUESTION and what == "x":
        return f"{name}.q{out.seq}"
    if out.kind == Kind.A3 and what == "q":
        return name
    code = CODES.get(out.kind)  # type: ignore[call-overload]
    if code is None or what != "x":
        return None
    return f"{name}.{code}{out.seq if out.kind == Kind.A1 else 0}"


@dataclass
class Tree:
    question: str
    nodes: dict[int, Node]
    subquestions: dict[str, OutputView]
    """Sub-question outputs (A3's first half) by the name of the node that answers them."""
    by_name: dict[str, int] = field(default_factory=dict)

    @classmethod
    def of(cls, question: str, outputs: Mapping[str, OutputView]) -> Tree:
        root = Node(ROOT, None, None, 0)
        nodes = {ROOT: root}
        by_name = {ROOT_NAME: ROOT}
        subquestions: dict[str, OutputView] = {}
        named = [(n, o) for o in outputs.values() if (n := _name_of(o)) is not None]
        # Parents first, and a sub-question before the answer named like it.
        order = sorted(named, key=lambda no: (no[0].count("."), no[0], no[1].kind != Kind.A3_QUESTION))
        for name, out in order:
            if out.kind == Kind.A3_QUESTION:
                subquestions[name] = out
                continue
            up = parent_name(name)
            parent = nodes.get(by_name.get(up, -1)) if up is not None else None
            if parent is None or name in by_name:
                continue  # its parent is not a node (a bug upstream): leave it out of the tree
            subq: str | None = None
            if out.kind == Kind.A3:
                sq = subquestions.get(name)
                if sq is None:
                    continue  # cannot happen: a sub-question is written before its answers
                subq = str(sq.payload.get("subquestion") or "")
            elif out.kind == Kind.A4:
                subq = parent.subquestion
            node = Node(
                id=out.id,
                kind=out.kind,
                parent=parent.id,
                depth=parent.depth + 1,
                answer=out.answer,
                value=_float(out.payload.get("share")),
                text=str(out.payload.get("text") or out.text or ""),
                subquestion=subq,
                terminal_subquestion=out.kind == Kind.A3 and is_terminal_subquestion(subq or "", question),
                output=out,
                name=name,
            )
            nodes[out.id] = node
            by_name[name] = out.id
            parent.children.append(out.id)  # in name order: `named` is sorted
        return cls(question, nodes, subquestions, by_name)

    def node(self, name: str) -> Node:
        return self.nodes[self.by_name[name]]

    def subquestions_of(self, node: Node) -> list[str]:
        """The names of the sub-questions A3 asked at the node that have text to answer."""
        return self._subquestions_by_parent.get(node.name, [])

    @cached_property
    def _subquestions_by_parent(self) -> dict[str | None, list[str]]:
        # Asked for every node a replay passes, every step: one pass over the sub-questions, not
        # one per node (that pass was a tenth of a step's CPU at the paper's budget).
        by_parent: dict[str | None, list[str]] = {}
        for name, q in self.subquestions.items():
            if str(q.payload.get("subquestion") or "").strip():
                by_parent.setdefault(parent_name(name), []).append(name)
        return by_parent

    @property
    def root(self) -> Node:
        return self.nodes[ROOT]

    def path(self, node_id: int) -> list[Node]:
        """Root first, the node last."""
        path: list[Node] = []
        current: int | None = node_id
        while current is not None:
            node = self.nodes[current]
            path.append(node)
            current = node.parent
        return path[::-1]

    def question_at(self, node_id: int) -> str:
        """The question as the node's trajectory states it (rephrased below an A5 node)."""
        for node in self.path(node_id):
            if node.kind == Kind.A5 and node.text:
                return node.text
        return self.question

    def steps(self, node_id: int) -> list[str]:
        """The node's trajectory as prompt lines: "Step k: ..." and sub-questions with answers;
        an A4 node's answer replaces its parent's."""
        lines: list[str] = []
        k = 0
        sub = 0
        for node in self.path(node_id)[1:]:
            if node.kind == Kind.A1:
                k += 1
                lines.append(f"Step {k}: {node.text}")
            elif node.kind == Kind.A3:
                sub += 1
                lines.append(f"Sub-question {sub}: {node.subquestion}")
                lines.append(f"Answer {sub}: {node.text}")
            elif node.kind == Kind.A4 and lines:
                lines[-1] = f"Answer {sub}: {node.text}"
            elif node.kind == Kind.A2:
                lines.append(node.text)
        return lines

    def counts(self, node_id: int) -> tuple[int, int]:
        """(steps, sub-questions) on the node's trajectory: what the next ones are numbered."""
        path = self.path(node_id)
        return (
            sum(1 for n in path if n.kind == Kind.A1),
            sum(1 for n in path if n.kind == Kind.A3),
        )

    def subquestion_pairs(self, node_id: int) -> list[tuple[str, str]]:
        """The sub-questions answered on the node's trajectory, with their answers (an A4 node's
        replacing its parent's): what the decomposition prompt and A2's hints show."""
        pairs: list[tuple[str, str]] = []
        for node in self.path(node_id)[1:]:
            if node.kind == Kind.A3:
                pairs.append((node.subquestion or "", node.text))
            elif node.kind == Kind.A4 and pairs:
                pairs[-1] = (pairs[-1][0], node.text)
        return pairs

    def one_step_thoughts(self, node_id: int) -> list[str]:
        """The A1 steps on the node's trajectory (its own included when it is one)."""
        return [n.text for n in self.path(node_id)[1:] if n.kind == Kind.A1]

    def trace_text(self, node_id: int) -> str:
        """The trajectory's reasoning as one text, as the authors' discriminator cuts it
        (run_src/rstar_utils.py, `concat_solution_trace`): each intermediate sub-answer without
        its "The answer is ...", the one-step thoughts, then "Now we can answer the question:"
        and the text that ends the trajectory (an A2 answer, the terminal sub-answer)."""
        path = self.path(node_id)[1:]
        parts: list[str] = []
        for i, node in enumerate(path):
            last = i == len(path) - 1
            if node.kind == Kind.A3 or node.kind == Kind.A4:
                if node.kind == Kind.A4 and parts:
                    parts.pop()  # the re-answer replaces its sub-question's answer
                if last and node.terminal_subquestion:
                    parts.append(f"Now we can answer the question: {node.text.strip()}")
                else:
                    parts.append(_ANSWER_CUE.split(node.text)[0].strip())
            elif node.kind == Kind.A1:
                parts.append(node.text.strip())
            elif node.kind == Kind.A2:
                lead = "Now we can answer the question: " if parts else ""
                parts.append(lead + node.text.strip())
        return " ".join(" ".join(p.split()) for p in parts if p.strip())

    def reasoning(self, node_id: int) -> list[str]:
        """The trajectory's reasoning as a list of steps, for the discriminator to cut."""
        out: list[str] = []
        for line in self.steps(node_id):
            out.extend(part.strip() for part in line.split("\n") if part.strip())
        return out


def _float(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
