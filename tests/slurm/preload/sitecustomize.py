"""Put on ``PYTHONPATH`` of the test's SLURM server jobs: a ``pulsetrain server`` process opens
the test's catalogue once at start-up, before it binds and is announced.

A correction device loads its constants in ``initialize()``, which the runtime gives 10 s; the
first catalogue opened in a process imports SQLAlchemy and Alembic and checks the schema, which
takes about 1 s on an idle machine and more than 10 s on this test machine when every core is
busy with other tests.  A long-running server at a facility pays that once; here every test
starts fresh servers, so they pay it up front (as ``pulsetrain demo`` warms the numba kernels).
Other Python processes of the jobs (the script's pings) are left alone.
"""

import os
import sys

_URL = os.environ.get("PULSETRAIN_TEST_PRELOAD_CATALOG")
_ARGV = getattr(sys, "orig_argv", sys.argv)
if _URL and "pulsetrain" in _ARGV and "server" in _ARGV:
    import pulsetrain.catalog.agipd  # noqa: F401 - what the correction device imports
    from pulsetrain.catalog import Catalog

    Catalog(_URL).close()
