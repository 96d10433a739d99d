"""SQLAlchemy ORM models of the catalogue (the schema at the newest migration).

The tables are created and changed only by the Alembic migrations in
``pulsetrain/catalog/migrations/versions``; these classes must describe the schema those
migrations produce (a test compares the two).
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, ClassVar

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, deferred, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

__all__ = [
    "Base",
    "ConstantRow",
    "ConstantSourceRow",
    "DetectorRow",
    "ModuleRow",
    "RunConstantRow",
    "RunFileRow",
    "RunRow",
    "UTCDateTime",
    "to_utc",
]

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def to_utc(value: datetime) -> datetime:
    """Return ``value`` as an aware UTC datetime; naive values are taken as local time."""
    return value.astimezone(timezone.utc)


def utc_now() -> datetime:
    """The current time as an aware UTC datetime."""
    return datetime.now(timezone.utc)


class UTCDateTime(TypeDecorator):
    """A timestamp stored in UTC and always returned as an aware UTC ``datetime``.

    SQLite keeps no time zone, PostgreSQL uses ``timestamp with time zone``; both store UTC.
    Naive datetimes given to the catalogue are interpreted as local time (Python's rule).
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        value = to_utc(value)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)


class Base(DeclarativeBase):
    """Declarative base of the catalogue tables."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: ClassVar[dict[Any, Any]] = {datetime: UTCDateTime()}


class DetectorRow(Base):
    """A detector, e.g. ``SPB_DET_AGIPD1M-1`` (an AGIPD with 16 modules)."""

    __tablename__ = "detectors"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    detector_type: Mapped[str] = mapped_column(String(32))
    n_modules: Mapped[int] = mapped_column(Integer)
    created: Mapped[datetime] = mapped_column(default=utc_now)

    modules: Mapped[list[ModuleRow]] = relationship(
        back_populates="detector", order_by="ModuleRow.module_index"
    )


class ModuleRow(Base):
    """One module of a detector, by position (index) and physical name."""

    __tablename__ = "modules"
    __table_args__ = (UniqueConstraint("detector_id", "module_index"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    detector_id: Mapped[int] = mapped_column(ForeignKey("detectors.id", ondelete="CASCADE"))
    module_index: Mapped[int] = mapped_column(Integer)
    physical_name: Mapped[str | None] = mapped_column(String(128))

    detector: Mapped[DetectorRow] = relationship(back_populates="modules")


class ConstantRow(Base):
    """A calibration constant of one module, its conditions, validity and array."""

    __tablename__ = "constants"
    __table_args__ = (
        CheckConstraint("storage IN ('file', 'db')", name="storage"),
        Index(None, "module_id", "constant_type", "valid_from"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    module_id: Mapped[int] = mapped_column(ForeignKey("modules.id", ondelete="CASCADE"))
    constant_type: Mapped[str] = mapped_column(String(64))

    memory_cells: Mapped[int | None] = mapped_column(Integer)
    bias_voltage: Mapped[float | None] = mapped_column(Float)
    acquisition_rate: Mapped[float | None] = mapped_column(Float)
    gain_setting: Mapped[int | None] = mapped_column(Integer)
    gain_mode: Mapped[int | None] = mapped_column(Integer)
    integration_time: Mapped[float | None] = mapped_column(Float)
    photon_energy: Mapped[float | None] = mapped_column(Float)

    valid_from: Mapped[datetime] = mapped_column()
    valid_to: Mapped[datetime | None] = mapped_column()
    created: Mapped[datetime] = mapped_column(default=utc_now)

    storage: Mapped[str] = mapped_column(String(8))
    file_path: Mapped[str | None] = mapped_column(String(1024))
    dataset: Mapped[str | None] = mapped_column(String(256))
    data: Mapped[bytes | None] = deferred(mapped_column(LargeBinary))
    checksum: Mapped[str] = mapped_column(String(64))
    shape: Mapped[str] = mapped_column(String(128))
    dtype: Mapped[str] = mapped_column(String(32))
    nbytes: Mapped[int] = mapped_column(BigInteger)

    # added by revision 0002
    comment: Mapped[str | None] = mapped_column(Text)

    module: Mapped[ModuleRow] = relationship()
    source_runs: Mapped[list[RunRow]] = relationship(
        secondary="constant_sources", order_by="RunRow.id"
    )


class RunRow(Base):
    """A run: proposal, run number, data category (RAW, CORR, ...), where its files are."""

    __tablename__ = "runs"
    __table_args__ = (UniqueConstraint("proposal", "run_number", "data_category"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    proposal: Mapped[int] = mapped_column(Integer)
    run_number: Mapped[int] = mapped_column(Integer)
    sample: Mapped[str | None] = mapped_column(String(256))
    run_type: Mapped[str] = mapped_column(String(64))
    data_category: Mapped[str] = mapped_column(String(16))
    path: Mapped[str] = mapped_column(String(1024))
    n_trains: Mapped[int | None] = mapped_column(Integer)
    start_time: Mapped[datetime | None] = mapped_column()
    end_time: Mapped[datetime | None] = mapped_column()
    created: Mapped[datetime] = mapped_column(default=utc_now)
    #: Correction steps of a CORR run, comma-separated (``offset,badpixels``); else NULL.
    corrections: Mapped[str | None] = mapped_column(String(256))

    files: Mapped[list[RunFileRow]] = relationship(
        back_populates="run", order_by="RunFileRow.name", cascade="all, delete-orphan"
    )
    constants: Mapped[list[ConstantRow]] = relationship(
        secondary="run_constants", order_by="ConstantRow.id"
    )


class RunFileRow(Base):
    """One file of a run (name relative to the run's path) and its size in bytes."""

    __tablename__ = "run_files"
    __table_args__ = (UniqueConstraint("run_id", "name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(512))
    size: Mapped[int] = mapped_column(BigInteger)

    run: Mapped[RunRow] = relationship(back_populates="files")


class RunConstantRow(Base):
    """Link: a (corrected) run was produced with a constant."""

    __tablename__ = "run_constants"

    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    constant_id: Mapped[int] = mapped_column(
        ForeignKey("constants.id", ondelete="CASCADE"), primary_key=True
    )


class ConstantSourceRow(Base):
    """Provenance link: a constant was computed from a run."""

    __tablename__ = "constant_sources"

    constant_id: Mapped[int] = mapped_column(
        ForeignKey("constants.id", ondelete="CASCADE"), primary_key=True
    )
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
