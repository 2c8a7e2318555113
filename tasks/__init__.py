"""Celery tasks, one module per stage. Each takes a step id, reads persisted state, does one
thing, writes it in one transaction and dispatches what comes next (`dispatch.py`)."""
