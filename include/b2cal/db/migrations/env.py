"""Alembic environment of the plugin database."""

from __future__ import annotations

from alembic import context
from sqlalchemy import engine_from_config, pool

from b2cal.db import inventorymodels, runmodels  # noqa: F401 - put their tables on Base.metadata
from b2cal.db.models import Base

config = context.config
target_metadata = Base.metadata
# A table name of its own, so the plugin tables can share a database server schema with other apps.
VERSION_TABLE = "b2cal_alembic_version"


def run_migrations_offline() -> None:
    """Emit the migration SQL without a database connection."""
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=target_metadata,
        version_table=VERSION_TABLE,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    """Apply the migrations over a connection, reusing the caller's connection when it passes one."""
    connection = config.attributes.get("connection")
    if connection is not None:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=True,
            version_table=VERSION_TABLE,
        )
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = engine_from_config(config.get_section(config.config_ini_section) or {}, poolclass=pool.NullPool)
    with engine.connect() as conn:
        context.configure(
            connection=conn,
            target_metadata=target_metadata,
            render_as_batch=True,
            version_table=VERSION_TABLE,
        )
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
