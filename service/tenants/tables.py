"""ORM tables of the tenant store (SQLAlchemy 2 declarative).

These describe the schema for queries; the Alembic migrations create it.
A test checks that the two agree.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, DateTime, Float, Integer, LargeBinary, MetaData, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Deterministic constraint names, so migrations can refer to them on every backend.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    """Declarative base with the naming convention."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class TenantRow(Base):
    """One tenant: identity, hashed API key, noise secret and defense parameters."""

    __tablename__ = "tenants"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(63), nullable=False, unique=True)
    key_id: Mapped[str] = mapped_column(String(32), nullable=False, unique=True, index=True)
    key_hash: Mapped[str] = mapped_column(String(64), nullable=False)
    noise_secret: Mapped[bytes] = mapped_column(LargeBinary(64), nullable=False)
    base_variance: Mapped[float] = mapped_column(Float, nullable=False)
    lambda_scale: Mapped[float] = mapped_column(Float, nullable=False)
    temperature: Mapped[float] = mapped_column(Float, nullable=False)
    ensemble_size: Mapped[int] = mapped_column(Integer, nullable=False)
    sensitivity: Mapped[str] = mapped_column(String(16), nullable=False)
    noise_mode: Mapped[str] = mapped_column(String(16), nullable=False)
    # Migration 0004; the server defaults are what tenants created before it hold.
    output_mode: Mapped[str] = mapped_column(String(20), nullable=False, server_default="dynanoise")
    confidence_buckets: Mapped[int] = mapped_column(Integer, nullable=False, server_default="4")
    # SQL NULL (not JSON null) means "every model".
    allowed_models: Mapped[list[str] | None] = mapped_column(JSON(none_as_null=True), nullable=True)
    rate_limit_per_second: Mapped[float | None] = mapped_column(Float, nullable=True)
    # Input rows per second, over all requests (migration 0003); NULL = unlimited.
    rows_per_second: Mapped[float | None] = mapped_column(Float, nullable=True)
    # Near-duplicate queries per minute (migration 0004); NULL = no cap.
    repeated_queries_per_minute: Mapped[float | None] = mapped_column(Float, nullable=True)
    version: Mapped[int] = mapped_column(Integer, nullable=False, default=1)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)

    def __repr__(self) -> str:
        return f"TenantRow(name={self.name!r}, key_id={self.key_id!r}, version={self.version})"


class RateLimitRow(Base):
    """GCRA state of one rate-limited tenant's requests (table created by migration 0002)."""

    __tablename__ = "rate_limits"

    tenant: Mapped[str] = mapped_column(String(63), primary_key=True)
    tat: Mapped[float] = mapped_column(Float, nullable=False)
    interval_seconds: Mapped[float] = mapped_column(Float, nullable=False)


class RowLimitRow(Base):
    """GCRA state of one tenant's rows-per-second limit, counted in input rows (table
    created by migration 0003; the same columns as ``rate_limits``)."""

    __tablename__ = "row_limits"

    tenant: Mapped[str] = mapped_column(String(63), primary_key=True)
    tat: Mapped[float] = mapped_column(Float, nullable=False)
    interval_seconds: Mapped[float] = mapped_column(Float, nullable=False)
