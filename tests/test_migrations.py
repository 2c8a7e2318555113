"""The schema comes only from Alembic: an empty database upgrades to head, matches the models, and
downgrades cleanly."""

from __future__ import annotations

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
