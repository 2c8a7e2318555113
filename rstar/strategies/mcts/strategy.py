"""`--strategy rstar`: the paper's MCTS generator and mutual-consistency discriminator
(Qi et al., 2024, arXiv 2408.06195).

One expansion of a node is one step per action, sent together; each step samples its
sequences at once (`ModelRequest.n`): A1 `a1_samples` next steps (each a child), A2 `votes`
chains of thought (one child: the majority answer, valued by its share; `last_votes` at the
depth limit and in the last rollout), A3 `subquestions` sub-questions, each then answered with
`votes` samples (`last_votes` for the terminal one), A4 `votes` new answers to the last
sub-question, A5 one rephrasing (root only, `a5=false` disables it). The search (search.py)
replays the rollouts over the persisted tree to find the node to expand next; after the last
rollout the discriminator model completes each candidate cut at `cuts` points
(discriminator.py). Step keys name nodes by their path (tree.py): "x0:a1" (the root's A1
children), "x0.s1:a2" (A2 from the root's second A1 step), "q0.q1:a3" (the answers to the root's
second sub-question), "d0.s1.d0:c2" (that A2 candidate, cut 2).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from rstar.answers import answers_equal
from rstar.parsing import parse_solution
from rstar.strategies.base import (
    SEED_MASK,
    ParamError,
    Plan,
    ProblemState,
    Selection,
    StepSpec,
    answer_groups,
    bool_param,
    choice_param,
    float_param,
    int_param,
    seed_param,
    step_seed,
)
from rstar.strategies.mcts import prompts
from rstar.strategies.mcts.discriminator import Candidate, Verdict, choose, confidences, cut_prefixes
from rstar.strategies.mcts.search import SearchState, replay
from rstar.strategies.mcts.tree import (
    ACTIONS,
    ROOT_NAME,
    VOTE_KINDS,
    Kind,
    Node,
    Tree,
    completion_key,
    expand_key,
    is_terminal_subquestion,
    parent_name,
    parse_key,
    subanswer_key,
)
from rstar.types import ModelRequest, ParsedOutput

DEFAULTS: dict[str, Any] = {
    "rollouts": 16,
    "max_depth": 5,
    "a1_samples": 3,
    "votes": 10,
    "last_votes": 32,
    "subquestions": 3,
    "a5": True,
    "exploration": 2.0,
    "temperature": 0.8,
    "top_p": 0.95,
    "top_k": 40,
    "max_tokens": 384,
    "step_tokens": 128,
    "cuts": 4,
    "cut_low": 0.2,
    "cut_high": 0.8,
    "skip_discriminator_at": 0.9,
    "seed": 0,
    "cot_format": "prose",
}

# Action -> the key's suffix ("x12.a1").
SUFFIX = {Kind.A1: "a1", Kind.A2: "a2", Kind.A3_QUESTION: "a3q", Kind.A4: "a4", Kind.A5: "a5"}
LAST = "a2L"
"""An A2 step sampling `last_votes` (depth limit, last rollout)."""
_STEP_PREFIX = re.compile(r"^\s*(?:\**\s*)?step\s*\d+\s*[:.)]\s*", re.IGNORECASE)
_SUBQ_PREFIX = re.compile(r"^\s*(?:\**\s*)?sub-?\s*question\s*\d+(?:\.\d+)?\s*[:.)]\s*", re.IGNORECASE)
_ANSWER_PREFIX = re.compile(r"^\s*(?:\**\s*)?answer\s*\d+(?:\.\d+)?\s*[:.)]\s*", re.IGNORECASE)
_STATES_ANSWER = re.compile(r"\banswer\s+is\b", re.IGNORECASE)
MAX_TEXT = 4000


@dataclass(frozen=True)
class SearchReport:
    """A problem's search as `rstar show` draws it: the tree with visits and values, the
    candidates, and the discriminator's completions of each (None: it was skipped or not run)."""

    tree: Tree
    search: SearchState
    candidates: list[Candidate]
    verdicts: dict[int, Verdict] | None
    completions: dict[int, list[tuple[str, str | None]]]
    """Candidate node -> (the prefix shown, the completion's answer) for each cut done."""


@dataclass(frozen=True)
class RStarParams:
    rollouts: int
    max_depth: int
    a1_samples: int
    votes: int
    last_votes: int
    subquestions: int
    a5: bool
    exploration: float
    temperature: float
    top_p: float
    top_k: int
    max_tokens: int
    step_tokens: int
    cuts: int
    cut_low: float
    cut_high: float
    skip_discriminator_at: float
    seed: int | None
    cot_format: str
    """How A2 and the completions reason: "prose" (the solve prompt's) or "steps" (few-shot)."""


def _clean(text: str, prefix: re.Pattern[str]) -> str:
    return prefix.sub("", text.strip(), count=1).strip()[:MAX_TEXT]


class RStarStrategy:
    name: ClassVar[str] = "rstar"
    min_models: ClassVar[int] = 1
    max_models: ClassVar[int | None] = 2
    """The generator (the first model) and the discriminator (the second; the first if alone)."""

    def __init__(self, params: Mapping[str, Any] | None = None, **_: Any) -> None:
        given = params or {}
        self.prompt_version = str(given.get("prompt_version") or prompts.PROMPT_VERSION)
        old = self.prompt_version in ("rstar-v1", "rstar-v2")
        # Jobs of the first versions reasoned in the few-shot step form: they replay as they ran.
        p = {**DEFAULTS, **({"cot_format": "steps"} if old else {}), **given}
        self.p = RStarParams(
            rollouts=int_param(p, "rollouts", 16, low=1, high=512),
            max_depth=int_param(p, "max_depth", 5, low=1, high=20),
            a1_samples=int_param(p, "a1_samples", 3, low=1, high=16),
            votes=int_param(p, "votes", 10, low=1, high=128),
            last_votes=int_param(p, "last_votes", 32, low=1, high=128),
            subquestions=int_param(p, "subquestions", 3, low=1, high=16),
            a5=bool_param(p, "a5", True),
            exploration=float_param(p, "exploration", 2.0, low=0.0, high=100.0),
            temperature=float_param(p, "temperature", 0.8, low=0.0, high=2.0),
            top_p=float_param(p, "top_p", 0.95, low=0.01, high=1.0),
            top_k=int_param(p, "top_k", 40, low=1, high=1000),
            max_tokens=int_param(p, "max_tokens", 384, low=16, high=32768),
            step_tokens=int_param(p, "step_tokens", 128, low=8, high=4096),
            cuts=int_param(p, "cuts", 4, low=1, high=16),
            cut_low=float_param(p, "cut_low", 0.2, low=0.0, high=1.0),
            cut_high=float_param(p, "cut_high", 0.8, low=0.0, high=1.0),
            skip_discriminator_at=float_param(p, "skip_discriminator_at", 0.9, low=0.0, high=1.0),
            seed=seed_param(p),
            cot_format=choice_param(p, "cot_format", "prose", choices=prompts.COT_FORMATS),
        )
        # Jobs of the first version drew every problem's branches from the job's seed alone: they
        # replay as they ran.
        self.shared_draws = self.prompt_version == "rstar-v1"
        if self.p.cut_low > self.p.cut_high:
            raise ParamError(f"cut_low ({self.p.cut_low}) must not be above cut_high ({self.p.cut_high})")

    @property
    def params(self) -> dict[str, Any]:
        return {**{k: getattr(self.p, k) for k in DEFAULTS}, "prompt_version": self.prompt_version}

    def budget(self) -> str:
        """What one problem may cost at most, for `rstar submit` to say before anything runs."""
        p = self.p
        per_node = 4 + p.subquestions  # A1, A2, A3's question, its answers, A4
        seqs = p.a1_samples + p.last_votes + p.subquestions * (1 + p.last_votes) + p.votes
        root = 1 if p.a5 else 0
        expansions = p.rollouts * p.max_depth
        requests = expansions * per_node + root + p.rollouts * p.cuts
        sequences = expansions * seqs + root + p.rollouts * p.cuts
        return (
            f"rstar: {p.rollouts} rollouts of depth <= {p.max_depth}: at most {requests} model calls"
            f" and {sequences} sampled sequences per problem (a rollout expands every node it"
            " reaches for the first time; most reach a terminal answer well before the limit)"
        )

    # -- the tree and the search ----------------------------------------------------------------

    def tree(self, state: ProblemState) -> Tree:
        """The state's tree, built once per state: a step asks for its parent, then its request."""
        last = getattr(self, "_last_tree", None)
        if last is not None and last[0] is state:
            return last[1]
        tree = Tree.of(state.question, state.outputs)
        self._last_tree = (state, tree)
        return tree

    def generator(self, models: Sequence[str]) -> str:
        return models[0]

    def discriminator(self, models: Sequence[str]) -> str:
        return models[1] if len(models) > 1 else models[0]

    def terminal(self, node: Node) -> bool:
        return node.kind == Kind.A2 or node.terminal_subquestion or node.depth >= self.p.max_depth

    def reward(self, node: Node) -> float:
        """A valid leaf's value (A2, a terminal sub-question), else 0 (run_src/MCTS_for_reasoning.py,
        `calculate_reward`)."""
        if node.kind == Kind.A2 or node.terminal_subquestion:
            return node.value or 0.0
        return 0.0

    def actions(self, node: Node) -> tuple[Kind, ...]:
        return tuple(a for a in ACTIONS[node.kind] if a != Kind.A5 or self.p.a5)

    def expansion_keys(
        self, tree: Tree, node: Node, state: ProblemState, *, last: bool
    ) -> list[tuple[str, Kind]]:
        """(key, kind) of the steps that expand `node`: one per action, one per sub-question to
        answer. `last`: an A2 not asked yet samples `last_votes`."""
        keys = []
        for action in self.actions(node):
            suffix = SUFFIX[action]
            if action == Kind.A2:
                # Asked in an earlier rollout: as it was then.
                done = [s for s in (SUFFIX[Kind.A2], LAST) if state.done(expand_key(node.name, s))]
                suffix = done[0] if done else (LAST if last else suffix)
            keys.append((expand_key(node.name, suffix), action))
        keys += [(subanswer_key(q), Kind.A3) for q in tree.subquestions_of(node)]
        return keys

    def expansion(self, tree: Tree, node: Node, state: ProblemState, rollout: int) -> list[StepSpec]:
        model = self.generator(state.models)
        last = rollout == self.p.rollouts or node.depth + 1 >= self.p.max_depth
        return [
            StepSpec(k, kind, model, rollout) for k, kind in self.expansion_keys(tree, node, state, last=last)
        ]

    def expanded(self, tree: Tree, node: Node, state: ProblemState) -> bool:
        return all(state.done(k) for k, _ in self.expansion_keys(tree, node, state, last=False))

    def search(self, state: ProblemState) -> tuple[Tree, SearchState]:
        tree = self.tree(state)
        result = replay(
            tree,
            rollouts=self.p.rollouts,
            exploration=self.p.exploration,
            seed=(self.p.seed or 0) if self.shared_draws else search_seed(self.p.seed, state.question),
            expanded=lambda n: self.expanded(tree, n, state),
            terminal=self.terminal,
            reward=self.reward,
        )
        return tree, result

    def candidates(self, tree: Tree, search: SearchState) -> list[Candidate]:
        seen: set[int] = set()
        out: list[Candidate] = []
        for r in search.rollouts:
            node = tree.nodes[r.path[-1]]
            if node.id in seen or node.answer is None or not self.terminal(node):
                continue
            seen.add(node.id)
            out.append(Candidate(node.id, node.answer, self.reward(node)))
        return out

    def skips_discriminator(self, candidates: Sequence[Candidate]) -> bool:
        return not candidates or confidences(candidates)[0][1] >= self.p.skip_discriminator_at

    def prefixes(self, tree: Tree, node_id: int) -> list[str]:
        return cut_prefixes(tree.reasoning(node_id), self.p.cuts, self.p.cut_low, self.p.cut_high)

    def completion_steps(
        self, tree: Tree, candidates: Sequence[Candidate], models: Sequence[str]
    ) -> list[StepSpec]:
        judge = self.discriminator(models)
        return [
            StepSpec(completion_key(tree.nodes[c.node].name, i), Kind.COMPLETE, judge, self.p.rollouts + 1)
            for c in candidates
            for i in range(len(self.prefixes(tree, c.node)))
        ]

    # -- the strategy contract ------------------------------------------------------------------

    def plan(self, state: ProblemState) -> Plan:
        tree, search = self.search(state)
        if search.waiting_at is not None:
            node = tree.nodes[search.waiting_at]
            return Plan(tuple(self.expansion(tree, node, state, len(search.rollouts) + 1)))
        candidates = self.candidates(tree, search)
        if self.skips_discriminator(candidates):
            return Plan((), finished=True)
        steps = self.completion_steps(tree, candidates, state.models)
        return Plan(tuple(steps), finished=all(state.done(s.key) for s in steps))

    def build_request(self, step: StepSpec, state: ProblemState) -> ModelRequest:
        what, name, rest = parse_key(step.key)
        tree = self.tree(state)
        p = self.p
        sample = {
            "temperature": p.temperature,
            "top_p": p.top_p,
            "top_k": p.top_k,
            "seed": step_seed(p.seed, step),
        }
        if what == "d":
            prefix = self.prefixes(tree, tree.by_name[name])[int(rest[1:])]
            return ModelRequest(
                messages=prompts.complete(state.question, prefix, cot_format=p.cot_format),
                max_tokens=p.max_tokens,
                n=1,
                **sample,
            )
        if what == "q":
            sq = tree.subquestions[name]
            parent = tree.by_name[parent_name(name) or ROOT_NAME]
            subq = str(sq.payload.get("subquestion") or "")
            terminal = tree.nodes[parent].depth + 1 >= p.max_depth or is_terminal_subquestion(
                subq, state.question
            )
            messages = prompts.subanswer(
                tree.question_at(parent), tree.steps(parent), tree.counts(parent)[1] + 1, subq
            )
            return ModelRequest(
                messages=messages,
                max_tokens=p.step_tokens * 2,
                n=p.last_votes if terminal else p.votes,
                stop=("\nSub-question", "\n\n"),
                **sample,
            )
        node = tree.node(name)
        question, steps = tree.question_at(node.id), tree.steps(node.id)
        k_steps, k_sub = tree.counts(node.id)
        if rest == SUFFIX[Kind.A1]:
            return ModelRequest(
                messages=prompts.one_step(question, steps, k_steps + 1),
                max_tokens=p.step_tokens,
                n=p.a1_samples,
                stop=("\n",),
                **sample,
            )
        if rest in (SUFFIX[Kind.A2], LAST):
            return ModelRequest(
                messages=prompts.remaining_steps(question, steps, k_steps + 1, cot_format=p.cot_format),
                max_tokens=p.max_tokens,
                n=p.last_votes if rest == LAST else p.votes,
                stop=("\n\nQuestion", "\nQuestion:"),
                **sample,
            )
        if rest == SUFFIX[Kind.A3_QUESTION]:
            return ModelRequest(
                messages=prompts.next_subquestion(question, steps, k_sub + 1),
                max_tokens=p.step_tokens,
                n=p.subquestions,
                stop=("\n",),
                **sample,
            )
        if rest == SUFFIX[Kind.A4]:
            return ModelRequest(
                messages=prompts.subanswer(question, steps[:-2], k_sub, node.subquestion or ""),
                max_tokens=p.step_tokens * 2,
                n=p.votes,
                stop=("\nSub-question", "\n\n"),
                **sample,
            )
        if rest == SUFFIX[Kind.A5]:
            return ModelRequest(messages=prompts.rephrase(question), max_tokens=p.max_tokens, n=1, **sample)
        raise ValueError(f"rstar has no step {step.key!r}")

    def parse(self, step: StepSpec, text: str) -> ParsedOutput:
        return self.parse_samples(step, (text,))[0]

    def parse_samples(self, step: StepSpec, texts: tuple[str, ...]) -> list[ParsedOutput]:
        """Never raises on model text: what could not be understood is kept with a parse_error."""
        kind = step.kind
        if kind == Kind.A1:
            return [_one_step(t) for t in texts]
        if kind == Kind.A3_QUESTION:
            return [_subquestion(t) for t in texts]
        if kind in VOTE_KINDS:
            return [_votes(texts, _ANSWER_PREFIX if kind != Kind.A2 else None)]
        if kind == Kind.A5:
            text = texts[0].strip()[:MAX_TEXT] if texts else ""
            return [ParsedOutput({"text": text}, parse_error=None if text else "empty rephrasing")]
        if kind == Kind.COMPLETE:
            parsed = parse_solution(texts[0] if texts else "")
            return [ParsedOutput({"steps": list(parsed.steps)}, parsed.answer, parsed.parse_error)]
        return [ParsedOutput({}, parse_error=f"rstar has no step kind {kind!r}")]

    def parent(self, step: StepSpec, state: ProblemState) -> int | None:
        what, name, _ = parse_key(step.key)
        tree = self.tree(state)
        if what == "q":
            return tree.subquestions[name].id
        return tree.by_name[name] or None  # the root is no output

    def select(self, state: ProblemState) -> Selection:
        tree, search = self.search(state)
        candidates = self.candidates(tree, search)
        rollouts = len(search.rollouts)
        if self.skips_discriminator(candidates):
            choice = choose(candidates, None, skipped_at=self.p.skip_discriminator_at)
        else:
            choice = choose(candidates, self.verdicts(tree, candidates, state))
        return Selection(choice.node, choice.answer, choice.reason, rollouts)

    def report(self, state: ProblemState) -> SearchReport:
        tree, search = self.search(state)
        candidates = self.candidates(tree, search) if search.waiting_at is None else []
        completions: dict[int, list[tuple[str, str | None]]] = {}
        for c in candidates:
            for i, prefix in enumerate(self.prefixes(tree, c.node)):
                out = state.outputs.get(completion_key(tree.nodes[c.node].name, i))
                if out is not None:
                    completions.setdefault(c.node, []).append((prefix, out.answer))
        skipped = not candidates or self.skips_discriminator(candidates)
        verdicts = None if skipped else self.verdicts(tree, candidates, state)
        return SearchReport(tree, search, candidates, verdicts, completions)

    def verdicts(
        self, tree: Tree, candidates: Sequence[Candidate], state: ProblemState
    ) -> dict[int, Verdict]:
        out: dict[int, Verdict] = {}
        for c in candidates:
            answers = [
                state.outputs[key].answer
                for i in range(len(self.prefixes(tree, c.node)))
                if (key := completion_key(tree.nodes[c.node].name, i)) in state.outputs
            ]
            out[c.node] = Verdict(c.node, len(answers), sum(1 for a in answers if answers_equal(c.answer, a)))
        return out


def search_seed(seed: int | None, question: str) -> int:
    """The seed of a problem's draws: the job's and the question's, so that problems whose trees
    have the same shape do not all take the same branches (a stable hash: a resumed search draws
    what it drew before)."""
    digest = hashlib.blake2b(f"{seed or 0}:{question}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") & SEED_MASK


def _one_step(text: str) -> ParsedOutput:
    step = _clean(text.split("\n")[0] if text.strip() else "", _STEP_PREFIX)
    if not step:
        return ParsedOutput({"text": ""}, parse_error="empty step", text=text)
    answer = parse_solution(step).answer if _STATES_ANSWER.search(step) else None
    return ParsedOutput({"text": step}, answer, text=text)


def _subquestion(text: str) -> ParsedOutput:
    subq = _clean(text.split("\n")[0] if text.strip() else "", _SUBQ_PREFIX)
    return ParsedOutput({"subquestion": subq}, parse_error=None if subq else "empty sub-question", text=text)


def _votes(texts: Sequence[str], prefix: re.Pattern[str] | None) -> ParsedOutput:
    """A vote node: the majority answer of its samples, valued by its share of them."""
    parsed = [parse_solution(t) for t in texts]
    answers = [p.answer for p in parsed]
    groups = answer_groups(parsed)
    best = max(groups, key=len) if groups else []  # max() keeps the first of equals
    answer, count = (best[0].answer, len(best)) if best else (None, 0)
    first = next((i for i, p in enumerate(parsed) if p is best[0]), None) if best else None
    chosen = texts[first] if first is not None else (texts[0] if texts else "")
    shown = _clean(chosen, prefix) if prefix is not None else chosen.strip()[:MAX_TEXT]
    payload = {
        "text": shown,
        "share": count / len(texts) if texts else 0.0,
        "votes": answers,
        "samples": len(texts),
    }
    error = None if answer is not None else f"none of the {len(texts)} samples gave an answer"
    return ParsedOutput(payload, answer, error, text=chosen)
