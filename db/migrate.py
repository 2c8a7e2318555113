"""Alembic, driven from Python so `rstar db upgrade` works wherever the package is installed."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from db.session import get_engine

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"


class SchemaOutOfDateError(RuntimeError):
    """The database is behind the code's migrations."""


class DowngradeRefusedError(RuntimeError):
    """A downgrade would lose data the older schema cannot hold (raised by the migration, before
    it changes anything)."""


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(url), revision)


def downgrade(url: str, revision: str) -> None:
    """Undo migrations down to `revision`. Every migration on the way that can lose data says so
    first (its `check_downgrade(connection)` raises DowngradeRefusedError), before any is undone:
    SQLite runs DDL outside transactions, so a refusal half-way would leave a schema half undone."""
    cfg = alembic_config(url)
    current = current_revision(url)
    if current is not None:
        with get_engine(url).connect() as conn:
            for rev in ScriptDirectory.from_config(cfg).iterate_revisions(current, revision):
                check = getattr(rev.module, "check_downgrade", None)
                if check is not None:
                    check(conn)
    command.downgrade(cfg, revision)


def head_revision(url: str) -> str | None:
    return ScriptDirectory.from_config(alembic_config(url)).get_current_head()


def current_revision(url: str) -> str | None:
    with get_engine(url).connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def ensure_current(url: str) -> None:
    """Refuse to work on a database whose schema is behind; say how to fix it."""
    current, head = current_revision(url), head_revision(url)
    if current != head:
        state = "has no schema yet" if current is None else f"is at revision {current}, the code needs {head}"
        raise SchemaOutOfDateError(f"the database {redact_url(url)} {state}: run `rstar db upgrade` first")


def redact_url(url: str) -> str:
    """The URL without its password, for messages and logs."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<database>"
