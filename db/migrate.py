"""Alembic, driven from Python so `rstar db upgrade` works wherever the package is installed."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import inspect, text

from db.session import get_engine

if TYPE_CHECKING:
    from alembic.config import Config

# Alembic is imported by the commands that migrate, not by those that only check the schema is
# current (every command does: `rstar status` should not pay for reading the migration scripts).
MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"
_REVISION_FILE = re.compile(r"^(\d{4})_\w+\.py$")


class SchemaOutOfDateError(RuntimeError):
    """The database is behind the code's migrations."""


class DowngradeRefusedError(RuntimeError):
    """A downgrade would lose data the older schema cannot hold (raised by the migration, before
    it changes anything)."""


def alembic_config(url: str) -> Config:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    from alembic import command

    command.upgrade(alembic_config(url), revision)


def downgrade(url: str, revision: str) -> None:
    """Undo migrations down to `revision`. Every migration on the way that can lose data says so
    first (its `check_downgrade(connection)` raises DowngradeRefusedError), before any is undone:
    SQLite runs DDL outside transactions, so a refusal half-way would leave a schema half undone."""
    from alembic import command
    from alembic.script import ScriptDirectory

    cfg = alembic_config(url)
    current = current_revision(url)
    if current is not None:
        with get_engine(url).connect() as conn:
            for rev in ScriptDirectory.from_config(cfg).iterate_revisions(current, revision):
                check = getattr(rev.module, "check_downgrade", None)
                if check is not None:
                    check(conn)
    command.downgrade(cfg, revision)


def head_revision(url: str | None = None) -> str | None:
    """The newest migration's revision: each is numbered in its file name and revision id alike,
    one after the other (tests/test_migrations.py holds them to it against Alembic's own head)."""
    found = [m[1] for p in (MIGRATIONS_DIR / "versions").iterdir() if (m := _REVISION_FILE.match(p.name))]
    return max(found, default=None)


def current_revision(url: str) -> str | None:
    """The revision the database is at (Alembic's `alembic_version` table), None before the first."""
    with get_engine(url).connect() as conn:
        if not inspect(conn).has_table("alembic_version"):
            return None
        return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()


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
