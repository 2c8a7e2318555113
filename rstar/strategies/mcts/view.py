"""A search tree as the CLI (`rstar show`) and the viewer (`rstar ui`) both draw it (pure).

What each node says, in the order and form both show it: its action's title, depth, visits, Q,
value and answer, what it wrote (a sub-question's answer with its sub-question), and whether it is
on the chosen trajectory or being expanded. The renderers only lay it out; neither knows the node
kinds of the search.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rstar.strategies.mcts.tree import NODE_TITLES

__all__ = ["NodeView", "tree_view"]


@dataclass(frozen=True)
class NodeView:
    id: int
    title: str
    """ "question" for the root, else its action's title."""
    is_root: bool
    depth: int
    visits: int
    q: float
    value: float | None
    answer: str | None
    text: str
    """What the node wrote ("" for the root); an A3 answer after its sub-question."""
    expanding: bool
    on_path: bool
    """On the trajectory of the chosen answer."""
    chosen: bool
    children: tuple[NodeView, ...]

    @property
    def name(self) -> str:
        return self.title if self.is_root else f"#{self.id} {self.title}"

    @property
    def mark(self) -> str:
        return "★ " if self.chosen else ("• " if self.on_path else "")


def tree_view(report: Any, chosen: int | None) -> NodeView:
    """The search's tree (`RStarStrategy.report(state)`) with `chosen` (the selected output's id,
    a node) and the path to it marked."""
    tree, stats = report.tree, report.search.stats
    on_path = {n.id for n in tree.path(chosen)} if chosen is not None and chosen in tree.nodes else set()

    def view(node_id: int) -> NodeView:
        node = tree.nodes[node_id]
        root = node.kind is None
        text = node.text if node.kind != "a3_answer" else f"{node.subquestion} → {node.text}"
        return NodeView(
            id=node.id,
            title="question" if root else NODE_TITLES.get(node.kind, node.kind),
            is_root=root,
            depth=node.depth,
            visits=stats.n(node.id),
            q=stats.q(node.id),
            value=node.value,
            answer=node.answer,
            text="" if root else (text or ""),
            expanding=node.id == report.search.waiting_at,
            on_path=node.id in on_path,
            chosen=node.id == chosen,
            children=tuple(view(child) for child in node.children),
        )

    return view(tree.root.id)
