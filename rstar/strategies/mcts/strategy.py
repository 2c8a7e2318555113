"""`--strategy rstar`: the paper's MCTS generator and mutual-consistency discriminator
(Qi et al., 2024, arXiv 2408.06195).

One expansion of a node is one step per action, sent together; each step samples its
sequences at once (`ModelRequest.n`): A1 `a1_samples` next steps (each a child), A2
`last_votes` chains of thought (one child: the majority answer, valued by its share), A3
`subquestions` sub-questions, each then answered with `votes` samples (`last_votes` for a
terminal one), A4 `votes` new answers to the last sub-question, A5 one rephrasing (root only,
`a5=false` disables it; `a1=false` and `a3=false` remove A1 and A3 with A4, for ablations). The
search (search.py) replays the rollouts over the persisted tree to find the node to expand next;
after the last rollout the discriminator model completes each candidate cut at `cuts` points
(discriminator.py). Step keys name nodes by their path (tree.py): "x0:a1" (the root's A1
children), "x0.s1:a2" (A2 from the root's second A1 step), "q0.q1:a3" (the answers to the root's
second sub-question), "d0.s1.d0:c2" (that A2 candidate, cut 2).

rstar-v5, the current version, is v4 with one departure, the terminal sub-answer (below). v4
follows the authors' code (microsoft/rStar, branch
rStar-mutualreasoning) where it and the paper agree:
- A2 samples `mcts_num_last_votes` wherever it is asked (run_src/MCTS_for_reasoning.py:145-149),
  so the root's A2 is a self-consistency vote of `last_votes` samples; below the root its question
  carries the trajectory as hints (:782, rstar_utils.py:541 `make_hint`). v1-v3 sampled `votes`
  but `last_votes` at the depth limit and in the last rollout, and continued the trajectory.
- A3 asks with the authors' decomposition prompt (prompts.py), a sub-question at
  `step_tokens` and one line (:168-191), answered in a line (:223-230): `last_votes` samples for a
  terminal sub-question, each one's own (the authors decide it by the last sub-question asked for
  all of them, :223: a defect not copied), and a terminal answer may reason at `max_tokens`.
- A4 re-answers the last sub-question by chain of thought on the question's context
  (:299-314), `votes` samples.
- A node's samples are voted on by the problem type's answers; where none gives one (an
  intermediate sub-question's "8" in a yes-no problem) the trajectory goes on with the sample
  whose stated answer most samples share, as the authors' `find_most_confident_answer` groups any
  answer (eval_src/Evaluator.py:56-79); such a node has no answer and is never a candidate.
- A1 one step at `step_tokens` (256, :436).
- The candidates are every valid solution node of the tree (an A2 answer, a terminal sub-answer,
  an A1 step that states the answer: :960 `is_valid_solution_node`, rstar_utils.py:624
  `find_valid_solution_nodes`) and each rollout's last node when it is one, counted by frequency
  (:1054-1059 write both, do_discriminate.py:442-466 merges equal trajectories into a frequency).
  A non-terminal node at the depth limit is no candidate: its answer is an intermediate one (the
  authors count a depth-limit sub-answer as a final answer: not copied; the authors also stop at
  an answering A1 step when collecting nodes, we keep the solution nodes below it too).
- The discriminator cuts each candidate's text (rstar_utils.py:220 `concat_solution_trace`) by
  words between `cut_low` 20% and `cut_high` 50% (:475 `mask_solution_trace`;
  do_discriminate.py:356-357), needs completions // 2 to agree (:220), and chooses as the
  authors do (discriminator.py, `choose_weighted`).
Decided where they differ, or where the authors' setting does not carry over:
- v5: a terminal sub-question (the question itself) is answered as A2 answers at its parent: the
  solve prompt, the answered sub-questions as hints, `last_votes` samples at `max_tokens`. The
  authors' one-line answer in the decomposition's form was right 1 time in 49 in v4's benchmark
  (0.5B model), against 38 in 134 for A2, and its confident wrong votes were chosen in 15
  problems; the decomposition keeps its part, the intermediate sub-answers.
- The discriminator is skipped only when every candidate gives the same answer
  (`skip_discriminator_at` 1.0): then it cannot change the answer. The authors' 0.999 on a
  reward-weighted confidence (do_discriminate.py:347, :505) skips in the same case and almost
  never otherwise. v1-v3: 0.9 of the candidates.
- A completion continues the cut text to its end in the prose of the solve prompt, at the
  generator's temperature (`completion_temperature`, unset). The authors complete one line at
  1.0 (:158-161), but their trajectories are one line of text, so their line is the whole rest;
  and their discriminator was a stronger model than the generator (Phi-3-mini), where ours is
  often the same small one, which derails more at 1.0.
- No repetition penalty: the authors' vLLM wrapper adds 1.1 to every call (models/vLLM_API.py:41),
  a setting no flag shows; cot and self-consistency send none, and rstar is compared with them.
- `max_tokens` 512 (cot's) rather than the authors' 1024; `last_votes` 32 and `votes` 10 as
  theirs (do_generate.py:120, :146).
Jobs of earlier versions replay as they ran (`prompt_version` in their stored parameters).
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Self

from pydantic import Field, model_validator

from rstar.parsing import parse_solution
from rstar.problem_types.base import ProblemType, after_answer_marker
from rstar.problem_types.number import NUMBER
from rstar.strategies.base import (
    SEED_MASK,
    Plan,
    ProblemState,
    Selection,
    StepSpec,
    StrategyBase,
    answer_groups,
    step_seed,
)
from rstar.strategies.mcts import prompts
from rstar.strategies.mcts.discriminator import (
    Candidate,
    Choice,
    Verdict,
    choose,
    choose_weighted,
    confidences,
    cut_prefixes,
    cut_words,
    generator_majority,
    needed_v4,
)
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
from rstar.strategies.params import ParamError, Params, Seed, Temperature, Tokens
from rstar.types import ChatMessage, ModelRequest, ParsedOutput

# What a job of an earlier version ran with where its stored parameters say nothing (they hold
# every parameter of their day; later ones get the value that keeps their behaviour).
OLD_DEFAULTS: dict[str, Any] = {
    "max_tokens": 384,
    "step_tokens": 128,
    "cut_high": 0.8,
    "skip_discriminator_at": 0.9,
}

# Action -> the key's suffix ("x12.a1").
SUFFIX = {Kind.A1: "a1", Kind.A2: "a2", Kind.A3_QUESTION: "a3q", Kind.A4: "a4", Kind.A5: "a5"}
LAST = "a2L"
"""An A2 step sampling `last_votes` (depth limit, last rollout)."""
_STEP_PREFIX = re.compile(r"^\s*(?:\**\s*)?step\s*\d+\s*[:.)]\s*", re.IGNORECASE)
_SUBQ_PREFIX = re.compile(
    r"^\s*(?:\**\s*)?(?:sub-?\s*)?question\s*\d+(?:\.\d+)?\s*[:.)]\s*", re.IGNORECASE
)  # "Sub-question 2:" (v1-v3) or "Question 5.2:" (v4)
_ANSWER_PREFIX = re.compile(r"^\s*(?:\**\s*)?answer\s*\d+(?:\.\d+)?\s*[:.)]\s*", re.IGNORECASE)
_STATES_ANSWER = re.compile(r"\banswer\s+is\b", re.IGNORECASE)
MAX_TEXT = 4000
A2_STOP = ("\n\nQuestion", "\nQuestion:")
"""A chain of thought stops before a question of its own making."""


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
    majority: str | None = None
    """The generator's majority answer over the candidates (the paper's "generator @maj")."""
    root_a2: Node | None = None
    """The root's A2 node: the search's self-consistency vote."""


class RStarParams(Params):
    rollouts: int = Field(16, ge=1, le=512, description="MCTS rollouts per problem")
    max_depth: int = Field(5, ge=1, le=20, description="a rollout's depth limit")
    a1_samples: int = Field(3, ge=1, le=16, description="A1: next steps sampled per expansion")
    votes: int = Field(10, ge=1, le=128, description="samples of a sub-answer (A3) or a re-answer (A4)")
    last_votes: int = Field(
        32, ge=1, le=128, description="samples of a chain of thought (A2) or a final answer"
    )
    subquestions: int = Field(3, ge=1, le=16, description="A3: sub-questions sampled per expansion")
    a1: bool = Field(True, description="A1, the next step (false: the ablation without it)")
    a3: bool = Field(True, description="A3, sub-questions, and with it A4 (false: the ablation without them)")
    a5: bool = Field(True, description="A5, the question rephrased as conditions (root only)")
    exploration: float = Field(2.0, ge=0.0, le=100.0, description="UCT's exploration constant")
    temperature: Temperature = 0.8
    top_p: float = Field(0.95, ge=0.01, le=1.0, description="nucleus sampling")
    top_k: int = Field(40, ge=1, le=1000, description="top-k sampling")
    max_tokens: Tokens = 512
    step_tokens: int = Field(256, ge=8, le=4096, description="tokens of one step or sub-question (A1, A3)")
    cuts: int = Field(4, ge=1, le=16, description="the discriminator's cuts per candidate")
    cut_low: float = Field(0.2, ge=0.0, le=1.0, description="the earliest cut, as a share of the words")
    cut_high: float = Field(0.5, ge=0.0, le=1.0, description="the latest cut, as a share of the words")
    skip_discriminator_at: float = Field(
        1.0, ge=0.0, le=1.0, description="the share of candidates one answer needs to skip the discriminator"
    )
    completion_temperature: float | None = Field(
        None, ge=0.0, le=2.0, description="the discriminator's temperature; null: the generator's"
    )
    seed: Seed = 0
    cot_format: Literal["prose", "steps"] = Field(
        "prose", description="how A2 and the completions reason: the solve prompt's prose, or few-shot steps"
    )

    @model_validator(mode="after")
    def _cuts_in_order(self) -> Self:
        if self.cut_low > self.cut_high:
            raise ValueError(f"cut_low ({self.cut_low}) must not be above cut_high ({self.cut_high})")
        return self


def _clean(text: str, prefix: re.Pattern[str]) -> str:
    return prefix.sub("", text.strip(), count=1).strip()[:MAX_TEXT]


class RStarStrategy(StrategyBase):
    name: ClassVar[str] = "rstar"
    parameters: ClassVar[type[Params]] = RStarParams
    searches: ClassVar[bool] = True
    min_models: ClassVar[int] = 1
    max_models: ClassVar[int | None] = 2
    """The generator (the first model) and the discriminator (the second; the first if alone)."""

    def __init__(
        self, params: Mapping[str, Any] | None = None, *, kind: ProblemType = NUMBER, **_: Any
    ) -> None:
        if kind.search is None:
            # A1's steps, A3's decompositions and A5's rephrasings are asked by example.
            raise ParamError(
                f"strategy 'rstar' has no few-shot prompts for {kind.name!r} problems; "
                "use cot, self-consistency, mutual or mutual-consistency for this type"
            )
        self.kind = kind
        given = params or {}
        self.prompt_version = str(given.get("prompt_version") or prompts.PROMPT_VERSION)
        self.version = _version_number(self.prompt_version)
        if self.version < 4 and kind is not NUMBER:
            raise ParamError(
                f"{self.prompt_version} asks for numbers only; {kind.name!r} problems need rstar-v4 or later"
            )
        old = self.version < 4
        self.p = RStarParams.read(
            {
                **(OLD_DEFAULTS if old else {}),
                # Jobs of the first versions reasoned in the few-shot step form: they replay as they ran.
                **({"cot_format": "steps"} if self.version < 3 else {}),
                **given,
            }
        )
        # Jobs of the first version drew every problem's branches from the job's seed alone: they
        # replay as they ran.
        self.shared_draws = self.version == 1

    @property
    def params(self) -> dict[str, Any]:
        return {**self.p.stored(), "prompt_version": self.prompt_version}

    def budget(self) -> str:
        """What one problem may cost at most, for `rstar submit` to say before anything runs."""
        p = self.p
        a2 = p.last_votes if self.version >= 4 else max(p.votes, p.last_votes)
        a3 = p.subquestions * (1 + p.last_votes) if p.a3 else 0
        per_node = 1 + (1 if p.a1 else 0) + ((2 + p.subquestions) if p.a3 else 0)  # A2, A1, A3 + A4
        seqs = (p.a1_samples if p.a1 else 0) + a2 + a3 + (p.votes if p.a3 else 0)
        root = 1 if p.a5 else 0
        expansions = p.rollouts * p.max_depth
        completions = p.rollouts * p.max_depth * p.cuts if self.version >= 4 else p.rollouts * p.cuts
        requests = expansions * per_node + root + completions
        sequences = expansions * seqs + root + completions
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
        off = {
            Kind.A1: not self.p.a1,
            Kind.A3_QUESTION: not self.p.a3,
            Kind.A4: not self.p.a3,
            Kind.A5: not self.p.a5,
        }
        return tuple(a for a in ACTIONS[node.kind] if not off.get(a, False))

    def is_solution(self, node: Node) -> bool:
        """A node whose answer answers the question (v4's candidates): an A2 answer, a terminal
        sub-question's answer, an A1 step that states the answer (MCTS_for_reasoning.py:960)."""
        if node.answer is None:
            return False
        return node.kind in (Kind.A2, Kind.A1) or node.terminal_subquestion

    def expansion_keys(
        self, tree: Tree, node: Node, state: ProblemState, *, last: bool
    ) -> list[tuple[str, Kind]]:
        """(key, kind) of the steps that expand `node`: one per action, one per sub-question to
        answer. `last`: an A2 not asked yet samples `last_votes`."""
        keys = []
        for action in self.actions(node):
            suffix = SUFFIX[action]
            if action == Kind.A2 and self.version < 4:  # v4's A2 always samples last_votes
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
        """v4: every solution node in the tree (depth first, children in name order), counted
        once more for each rollout that ended at it. v1-v3: each rollout's terminal node, once."""
        if self.version < 4:
            seen: set[int] = set()
            out: list[Candidate] = []
            for r in search.rollouts:
                node = tree.nodes[r.path[-1]]
                if node.id in seen or node.answer is None or not self.terminal(node):
                    continue
                seen.add(node.id)
                out.append(Candidate(node.id, node.answer, self.reward(node)))
            return out
        ended = Counter(r.path[-1] for r in search.rollouts)
        found: list[Candidate] = []
        todo = [tree.root.id]
        while todo:
            node = tree.nodes[todo.pop()]
            if node.answer is not None and self.is_solution(node):
                found.append(Candidate(node.id, node.answer, self.reward(node), 1 + ended[node.id]))
            todo.extend(reversed(node.children))
        return found

    def skips_discriminator(self, candidates: Sequence[Candidate]) -> bool:
        return not candidates or confidences(candidates, self.kind)[0][1] >= self.p.skip_discriminator_at

    def prefixes(self, tree: Tree, node_id: int) -> list[str]:
        if self.version >= 4:
            return cut_words(tree.trace_text(node_id), self.p.cuts, self.p.cut_low, self.p.cut_high)
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

    def plans_after(self, kind: str, others_open: bool) -> bool:
        """A search asks for one batch at a time (a node's expansion, or the candidates'
        completions) and moves on only when all of it is done; within a batch, only a sub-question
        step adds work (the answers to its sub-questions). So a step that is not one, while others
        are open, leaves the plan as it was: replaying the search for it, as every step did, was
        most of a step's CPU at the paper's budget."""
        return not others_open or kind == Kind.A3_QUESTION

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
            if p.completion_temperature is not None:
                sample["temperature"] = p.completion_temperature
            return ModelRequest(
                messages=prompts.complete(state.question, prefix, cot_format=p.cot_format, kind=self.kind),
                max_tokens=p.max_tokens,
                n=1,
                **sample,
            )
        if what == "q":
            return self._subanswer_request(tree, name, state, sample)
        node = tree.node(name)
        question, steps = tree.question_at(node.id), tree.steps(node.id)
        k_steps, k_sub = tree.counts(node.id)
        v4 = self.version >= 4
        if rest == SUFFIX[Kind.A1]:
            return ModelRequest(
                messages=prompts.one_step(question, steps, k_steps + 1, kind=self.kind),
                max_tokens=p.step_tokens,
                n=p.a1_samples,
                stop=("\n",),
                **sample,
            )
        if rest in (SUFFIX[Kind.A2], LAST):
            if v4:
                messages = self._answer_with_hints(tree, node.id)
            else:
                messages = prompts.remaining_steps(question, steps, k_steps + 1, cot_format=p.cot_format)
            return ModelRequest(
                messages=messages,
                max_tokens=p.max_tokens,
                n=p.last_votes if rest == LAST or v4 else p.votes,
                stop=A2_STOP,
                **sample,
            )
        if rest == SUFFIX[Kind.A3_QUESTION]:
            messages = (
                prompts.decompose_next(question, tree.subquestion_pairs(node.id), kind=self.kind)
                if v4
                else prompts.next_subquestion(question, steps, k_sub + 1)
            )
            return ModelRequest(
                messages=messages, max_tokens=p.step_tokens, n=p.subquestions, stop=("\n",), **sample
            )
        if rest == SUFFIX[Kind.A4]:
            if v4:
                return ModelRequest(
                    messages=prompts.reanswer(question, node.subquestion or "", kind=self.kind),
                    max_tokens=p.max_tokens,
                    n=p.votes,
                    **sample,
                )
            return ModelRequest(
                messages=prompts.subanswer(question, steps[:-2], k_sub, node.subquestion or ""),
                max_tokens=p.step_tokens * 2,
                n=p.votes,
                stop=("\nSub-question", "\n\n"),
                **sample,
            )
        if rest == SUFFIX[Kind.A5]:
            return ModelRequest(
                messages=prompts.rephrase(question, kind=self.kind), max_tokens=p.max_tokens, n=1, **sample
            )
        raise ValueError(f"rstar has no step {step.key!r}")

    def _answer_with_hints(self, tree: Tree, node_id: int) -> tuple[ChatMessage, ...]:
        """v4's A2 at a node: cot's request, the node's trajectory as hints (and since v5 the
        answer to a terminal sub-question asked below it)."""
        hints = prompts.hint(tree.subquestion_pairs(node_id), tree.one_step_thoughts(node_id))
        return prompts.answer_with_hints(tree.question_at(node_id), hints, kind=self.kind)

    def _subanswer_request(
        self, tree: Tree, name: str, state: ProblemState, sample: dict[str, Any]
    ) -> ModelRequest:
        """The answers to a sub-question A3 asked (its second half)."""
        p = self.p
        sq = tree.subquestions[name]
        parent = tree.by_name[parent_name(name) or ROOT_NAME]
        subq = str(sq.payload.get("subquestion") or "")
        depth_limit = tree.nodes[parent].depth + 1 >= p.max_depth
        if self.version >= 4:
            # Only a sub-question that is the question itself is answered as the question (with
            # `last_votes`, at `max_tokens`): at the depth limit an intermediate answer ends the
            # rollout but is no solution.
            terminal = is_terminal_subquestion(subq, state.question)
            if terminal and self.version >= 5:
                # v5: the question itself is answered by chain of thought, the sub-answers given
                # as hints (A2's request at the parent). The authors' one-line answer (:228-237)
                # was right 1 time in 49 with a 0.5B model in v4's benchmark, yet was chosen in
                # 15 problems (docs/results/accuracy/rstar, v4).
                return ModelRequest(
                    messages=self._answer_with_hints(tree, parent),
                    max_tokens=p.max_tokens,
                    n=p.last_votes,
                    stop=A2_STOP,
                    **sample,
                )
            return ModelRequest(
                messages=prompts.decompose_answer(
                    tree.question_at(parent),
                    tree.subquestion_pairs(parent),
                    subq,
                    terminal=terminal,
                    kind=self.kind,
                ),
                max_tokens=p.max_tokens if terminal else p.step_tokens,
                n=p.last_votes if terminal else p.votes,
                stop=("\n",),
                **sample,
            )
        terminal = depth_limit or is_terminal_subquestion(subq, state.question)
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

    def parse(self, step: StepSpec, text: str) -> ParsedOutput:
        return self.parse_samples(step, (text,))[0]

    def parse_samples(self, step: StepSpec, texts: tuple[str, ...]) -> list[ParsedOutput]:
        """Never raises on model text: what could not be understood is kept with a parse_error."""
        kind = step.kind
        if kind == Kind.A1:
            return [_one_step(t, self.kind) for t in texts]
        if kind == Kind.A3_QUESTION:
            return [_subquestion(t) for t in texts]
        if kind in VOTE_KINDS:
            prose = kind == Kind.A2 or (kind == Kind.A4 and self.version >= 4)  # a chain of thought
            return [_votes(texts, None if prose else _ANSWER_PREFIX, self.kind)]
        if kind == Kind.A5:
            text = texts[0].strip()[:MAX_TEXT] if texts else ""
            return [ParsedOutput({"text": text}, parse_error=None if text else "empty rephrasing")]
        if kind == Kind.COMPLETE:
            parsed = parse_solution(texts[0] if texts else "", self.kind)
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
        choice = self.choose(tree, search, state)
        return Selection(choice.node, choice.answer, choice.reason, len(search.rollouts))

    def choose(self, tree: Tree, search: SearchState, state: ProblemState) -> Choice:
        candidates = self.candidates(tree, search)
        skipped = self.skips_discriminator(candidates)
        verdicts = None if skipped else self.verdicts(tree, candidates, state)
        if self.version >= 4:
            return choose_weighted(
                candidates, verdicts, skipped_at=self.p.skip_discriminator_at, kind=self.kind
            )
        return choose(candidates, verdicts, skipped_at=self.p.skip_discriminator_at, kind=self.kind)

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
        majority = (
            generator_majority(candidates, self.kind)
            if self.version >= 4
            else _share_majority(candidates, self.kind)
        )
        return SearchReport(tree, search, candidates, verdicts, completions, majority, self.root_a2(tree))

    def root_a2(self, tree: Tree) -> Node | None:
        """The root's A2 node: the search's own self-consistency vote (None: not asked, or A5
        below the root only)."""
        return next((tree.nodes[c] for c in tree.root.children if tree.nodes[c].kind == Kind.A2), None)

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
            agreeing = sum(1 for a in answers if self.kind.equal(c.answer, a))
            needed = needed_v4(len(answers)) if self.version >= 4 else None
            out[c.node] = Verdict(c.node, len(answers), agreeing, needed)
        return out


def _version_number(prompt_version: str) -> int:
    """5 for "rstar-v5"; a version this code does not know is refused."""
    head, _, number = prompt_version.rpartition("-v")
    if head != "rstar" or not number.isdigit() or not 1 <= int(number) <= 5:
        raise ParamError(f"prompt_version must be rstar-v1 .. rstar-v5, got {prompt_version!r}")
    return int(number)


def _share_majority(candidates: Sequence[Candidate], kind: ProblemType) -> str | None:
    """Versions 1-3: the answer most candidates give."""
    ranked = confidences(candidates, kind)
    return ranked[0][0] if ranked else None


def search_seed(seed: int | None, question: str) -> int:
    """The seed of a problem's draws: the job's and the question's, so that problems whose trees
    have the same shape do not all take the same branches (a stable hash: a resumed search draws
    what it drew before)."""
    digest = hashlib.blake2b(f"{seed or 0}:{question}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") & SEED_MASK


def _one_step(text: str, kind: ProblemType) -> ParsedOutput:
    step = _clean(text.split("\n")[0] if text.strip() else "", _STEP_PREFIX)
    if not step:
        return ParsedOutput({"text": ""}, parse_error="empty step", text=text)
    answer = parse_solution(step, kind).answer if _STATES_ANSWER.search(step) else None
    return ParsedOutput({"text": step}, answer, text=text)


def _subquestion(text: str) -> ParsedOutput:
    """The sub-question on the reply's first line, up to its question mark: a small model often
    answers it on the same line, and that answer is A3's second half to give."""
    subq = _clean(text.split("\n")[0] if text.strip() else "", _SUBQ_PREFIX)
    if "?" in subq:
        subq = subq[: subq.index("?") + 1]
    return ParsedOutput({"subquestion": subq}, parse_error=None if subq else "empty sub-question", text=text)


def _stated(text: str) -> str:
    """The answer a sample states, in any form: the line after its last "the answer is", lowercased,
    its closing period dropped (the authors' `isolate_answer`, eval_src/Evaluator.py:37-54)."""
    lines = after_answer_marker(text, " .:\n").strip().split("\n")
    return " ".join(lines[0].lower().strip(" .:").split())


def _most_stated(texts: Sequence[str]) -> int | None:
    """The first of the samples whose stated answer most samples share, for votes none of which
    answers in the problem's form: an intermediate sub-question's ("How many legs has a spider?",
    8, in a yes-no problem). Its trajectory then goes on with the answer most samples give, as the
    authors' `find_most_confident_answer` groups any answer (Evaluator.py:56-79); the node keeps
    no answer, so it is never a candidate."""
    stated = [_stated(t) for t in texts]
    counts = Counter(a for a in stated if a)
    if not counts:
        return 0 if texts else None
    top = max(counts.values())
    return next(i for i, a in enumerate(stated) if a and counts[a] == top)


def _votes(texts: Sequence[str], prefix: re.Pattern[str] | None, kind: ProblemType) -> ParsedOutput:
    """A vote node: the majority answer of its samples, valued by its share of them."""
    parsed = [parse_solution(t, kind) for t in texts]
    answers = [p.answer for p in parsed]
    groups = answer_groups(parsed, kind)
    best = max(groups, key=len) if groups else []  # max() keeps the first of equals
    answer, count = (best[0].answer, len(best)) if best else (None, 0)
    first = next((i for i, p in enumerate(parsed) if p is best[0]), None) if best else _most_stated(texts)
    chosen = texts[first] if first is not None else ""
    shown = _clean(chosen, prefix) if prefix is not None else chosen.strip()[:MAX_TEXT]
    payload = {
        "text": shown,
        "share": count / len(texts) if texts else 0.0,
        "votes": answers,
        "samples": len(texts),
    }
    error = None if answer is not None else f"none of the {len(texts)} samples gave an answer"
    return ParsedOutput(payload, answer, error, text=chosen)
