"""Monte Carlo tree search over a persisted tree, by replay.

Nothing of the search is stored but the tree itself: visits and values are recomputed by
replaying the rollouts in order over the outputs. Rollout r starts at the root; at each node,
an unvisited child is drawn first (a seeded draw, by the node's name: the same whatever the
database ids), else the child with the highest UCT
    Q/N + c * sqrt(ln N_parent / N)
(ties drawn too); a node whose children are not there yet is where the rollout waits: its
expansion is what the strategy plans next. At a terminal node the rollout ends and its reward
(the terminal's value, 0 when it has none) is added to every node on the path.

Rollouts run one after another, as UCT needs the previous backpropagation; many problems search
at once. This is microsoft/rStar's loop (branch rStar-mutualreasoning, run_src/MCTS_backbone.py:
`_select` draws an unexplored child, `_simulate` descends at random, `_backpropagate` adds the
leaf's reward along the path) in one rule: during a simulation every child is unvisited, so the
draw is the random descent. The exploration weight is constant (their default "const" schedule).
Because the replay is deterministic, a crashed or resumed search continues where it stopped and
pays for no node twice.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from rstar.strategies.mcts.tree import ROOT, Node, Tree


@dataclass
class Stats:
    visits: dict[int, int] = field(default_factory=dict)
    value: dict[int, float] = field(default_factory=dict)
    """Q: the summed reward of every rollout through the node."""

    def n(self, node: int) -> int:
        return self.visits.get(node, 0)

    def q(self, node: int) -> float:
        return self.value.get(node, 0.0)

    def add(self, path: Sequence[Node], reward: float) -> None:
        for node in path:
            self.visits[node.id] = self.n(node.id) + 1
            self.value[node.id] = self.q(node.id) + reward


@dataclass(frozen=True)
class Rollout:
    index: int
    path: tuple[int, ...]
    reward: float


@dataclass
class SearchState:
    stats: Stats
    rollouts: list[Rollout]
    """The rollouts finished, in order."""
    waiting_at: int | None
    """The node the next rollout needs expanded (None: every rollout is done)."""
    waiting_path: tuple[int, ...] = ()


def draw(candidates: Sequence[int], seed: int, rollout: int, at: str) -> int:
    """A reproducible choice among `candidates` (stable across processes, unlike `hash`)."""
    digest = hashlib.blake2b(f"{seed}:{rollout}:{at}".encode(), digest_size=8).digest()
    return candidates[int.from_bytes(digest, "big") % len(candidates)]


def uct(stats: Stats, parent: int, child: int, exploration: float) -> float:
    n = stats.n(child)
    if n == 0:
        return math.inf
    return stats.q(child) / n + exploration * math.sqrt(math.log(max(1, stats.n(parent))) / n)


def select_child(node: Node, stats: Stats, exploration: float, seed: int, rollout: int) -> int:
    unvisited = [c for c in node.children if stats.n(c) == 0]
    if unvisited:
        return draw(unvisited, seed, rollout, node.name)
    scores = {c: uct(stats, node.id, c, exploration) for c in node.children}
    best = max(scores.values())
    return draw([c for c in node.children if scores[c] == best], seed, rollout, node.name)


def replay(
    tree: Tree,
    *,
    rollouts: int,
    exploration: float,
    seed: int,
    expanded: Callable[[Node], bool],
    terminal: Callable[[Node], bool],
    reward: Callable[[Node], float],
) -> SearchState:
    """Replay the rollouts over the tree as it stands: the stats, and where the search waits."""
    stats = Stats()
    done: list[Rollout] = []
    for r in range(1, rollouts + 1):
        node = tree.root
        path = [node]
        while not terminal(node):
            if not expanded(node):
                return SearchState(stats, done, node.id, tuple(n.id for n in path))
            if not node.children:
                break  # an expansion that gave nothing usable: a dead end, reward 0
            node = tree.nodes[select_child(node, stats, exploration, seed, r)]
            path.append(node)
        gained = reward(node) if terminal(node) else 0.0
        stats.add(path, gained)
        done.append(Rollout(r, tuple(n.id for n in path), gained))
    return SearchState(stats, done, None)


__all__ = ["ROOT", "Rollout", "SearchState", "Stats", "draw", "replay", "select_child", "uct"]
