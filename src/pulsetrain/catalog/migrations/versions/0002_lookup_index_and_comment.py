"""Index for the constant look-up and a free-text comment on constants.

The look-up a correction device makes filters constants by module and type and orders them by
``valid_from``; the index covers exactly that.  ``comment`` records how a constant was made
(e.g. "pulsetrain dark, runs 12-14").

Revision: 0002
Parent: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("constants") as batch:
        batch.add_column(sa.Column("comment", sa.Text(), nullable=True))
    op.create_index(
        op.f("ix_constants_module_id_constant_type_valid_from"),
        "constants",
        ["module_id", "constant_type", "valid_from"],
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_constants_module_id_constant_type_valid_from"), table_name="constants")
    with op.batch_alter_table("constants") as batch:
        batch.drop_column("comment")
