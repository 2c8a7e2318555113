"""The schema comes only from Alembic: an empty database upgrades to head, matches the models, and
downgrades cleanly."""

from __future__ import annotations

from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from db import migrate
from db.models import Base
from db.session import get_engine


def test_upgrade_matches_models_and_downgrade_empties(db_url: str) -> None:
    migrate.upgrade(db_url)
    assert migrate.current_revision(db_url) == migrate.head_revision(db_url)
    engine = get_engine(db_url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
    assert diff == []
    migrate.downgrade(db_url, "base")
    assert set(inspect(get_engine(db_url)).get_table_names()) <= {"alembic_version"}


def test_the_head_and_the_current_revision_read_without_alembic_agree_with_alembic(db_url: str) -> None:
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(migrate.alembic_config(db_url))
    assert migrate.head_revision() == script.get_current_head()
    # Numbered in file name and id alike, one after the other, each down to the one before.
    revisions = list(reversed(list(script.walk_revisions())))
    assert [r.revision for r in revisions] == [f"{i:04d}" for i in range(1, len(revisions) + 1)]
    assert all(Path(r.path).name.startswith(f"{r.revision}_") for r in revisions)
    assert [r.down_revision for r in revisions] == [None, *(r.revision for r in revisions[:-1])]
    assert migrate.current_revision(db_url) is None
    migrate.upgrade(db_url, "0004")
    with get_engine(db_url).connect() as conn:
        assert (
            migrate.current_revision(db_url)
            == MigrationContext.configure(conn).get_current_revision()
            == "0004"
        )
