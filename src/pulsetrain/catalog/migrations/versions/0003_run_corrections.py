"""The correction steps a CORR run was made with.

``corrections`` holds the step names, comma-separated in their fixed order
(``offset,gainstage,relgain,badpixels``); NULL for runs that are not corrected data.

Revision: 0003
Parent: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("corrections", sa.String(256), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("corrections")
