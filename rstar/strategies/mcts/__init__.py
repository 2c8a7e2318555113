"""rStar (Qi et al., 2024): MCTS over five reasoning actions, then mutual consistency.

Split like maitrix-org/llm-reasoners: the world (tree.py: nodes and trajectories from the
persisted outputs), the search algorithm (search.py: UCT by replay), the discriminator
(discriminator.py), the prompts (prompts.py), and the strategy that ties them to the step
machinery (strategy.py).
"""

from rstar.strategies.mcts.strategy import RStarStrategy

__all__ = ["RStarStrategy"]
