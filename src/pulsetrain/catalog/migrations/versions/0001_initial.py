"""Initial catalogue: detectors, modules, constants, runs, run files and their links.

Revision: 0001
Parent: none
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _timestamp(name: str, nullable: bool = False) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "detectors",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("detector_type", sa.String(32), nullable=False),
        sa.Column("n_modules", sa.Integer(), nullable=False),
        _timestamp("created"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_detectors")),
        sa.UniqueConstraint("name", name=op.f("uq_detectors_name")),
    )
    op.create_table(
        "modules",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("detector_id", sa.Integer(), nullable=False),
        sa.Column("module_index", sa.Integer(), nullable=False),
        sa.Column("physical_name", sa.String(128), nullable=True),
        sa.ForeignKeyConstraint(
            ["detector_id"],
            ["detectors.id"],
            name=op.f("fk_modules_detector_id_detectors"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_modules")),
        sa.UniqueConstraint(
            "detector_id", "module_index", name=op.f("uq_modules_detector_id_module_index")
        ),
    )
    op.create_table(
        "runs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("proposal", sa.Integer(), nullable=False),
        sa.Column("run_number", sa.Integer(), nullable=False),
        sa.Column("sample", sa.String(256), nullable=True),
        sa.Column("run_type", sa.String(64), nullable=False),
        sa.Column("data_category", sa.String(16), nullable=False),
        sa.Column("path", sa.String(1024), nullable=False),
        sa.Column("n_trains", sa.Integer(), nullable=True),
        _timestamp("start_time", nullable=True),
        _timestamp("end_time", nullable=True),
        _timestamp("created"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_runs")),
        sa.UniqueConstraint(
            "proposal",
            "run_number",
            "data_category",
            name=op.f("uq_runs_proposal_run_number_data_category"),
        ),
    )
    op.create_table(
        "run_files",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(512), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.id"], name=op.f("fk_run_files_run_id_runs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_run_files")),
        sa.UniqueConstraint("run_id", "name", name=op.f("uq_run_files_run_id_name")),
    )
    op.create_table(
        "constants",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("module_id", sa.Integer(), nullable=False),
        sa.Column("constant_type", sa.String(64), nullable=False),
        sa.Column("memory_cells", sa.Integer(), nullable=True),
        sa.Column("bias_voltage", sa.Float(), nullable=True),
        sa.Column("acquisition_rate", sa.Float(), nullable=True),
        sa.Column("gain_setting", sa.Integer(), nullable=True),
        sa.Column("gain_mode", sa.Integer(), nullable=True),
        sa.Column("integration_time", sa.Float(), nullable=True),
        sa.Column("photon_energy", sa.Float(), nullable=True),
        _timestamp("valid_from"),
        _timestamp("valid_to", nullable=True),
        _timestamp("created"),
        sa.Column("storage", sa.String(8), nullable=False),
        sa.Column("file_path", sa.String(1024), nullable=True),
        sa.Column("dataset", sa.String(256), nullable=True),
        sa.Column("data", sa.LargeBinary(), nullable=True),
        sa.Column("checksum", sa.String(64), nullable=False),
        sa.Column("shape", sa.String(128), nullable=False),
        sa.Column("dtype", sa.String(32), nullable=False),
        sa.Column("nbytes", sa.BigInteger(), nullable=False),
        sa.CheckConstraint("storage IN ('file', 'db')", name=op.f("ck_constants_storage")),
        sa.ForeignKeyConstraint(
            ["module_id"],
            ["modules.id"],
            name=op.f("fk_constants_module_id_modules"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_constants")),
    )
    op.create_table(
        "run_constants",
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("constant_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["constant_id"],
            ["constants.id"],
            name=op.f("fk_run_constants_constant_id_constants"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.id"], name=op.f("fk_run_constants_run_id_runs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("run_id", "constant_id", name=op.f("pk_run_constants")),
    )
    op.create_table(
        "constant_sources",
        sa.Column("constant_id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["constant_id"],
            ["constants.id"],
            name=op.f("fk_constant_sources_constant_id_constants"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["runs.id"],
            name=op.f("fk_constant_sources_run_id_runs"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("constant_id", "run_id", name=op.f("pk_constant_sources")),
    )


def downgrade() -> None:
    for table in (
        "constant_sources",
        "run_constants",
        "constants",
        "run_files",
        "runs",
        "modules",
        "detectors",
    ):
        op.drop_table(table)
