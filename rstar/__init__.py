"""The domain of rStar batch reasoning: prompts, parsing, answers, inputs and strategies.

Nothing in this package does I/O: no HTTP, no database, no Celery. The I/O layers (`workers/`,
`tasks/`, `db/`, `cli/`) call into it with plain data and store what it returns.
"""
