"""Fixtures of the ``slurm`` tests: the one-node SLURM cluster that ``.ci/slurm.sh`` starts.

The tests run when ``PULSETRAIN_TEST_SLURM_PARTITION`` names a partition of the cluster
``SLURM_CONF`` points at (``eval "$(.ci/slurm.sh)"`` exports both; ``scripts/test-all.sh`` does
it); without it they skip and say so.  Set but not answering is a failure, not a skip.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

PARTITION_ENV = "PULSETRAIN_TEST_SLURM_PARTITION"
SKIP_SLURM = (
    f"SLURM tests need {PARTITION_ENV} and SLURM_CONF; start a one-node cluster with "
    "'eval \"$(.ci/slurm.sh)\"' (as root)"
)


@pytest.fixture(scope="session")
def slurm_partition() -> str:
    """The partition to submit to; the cluster is checked to answer with its node up."""
    partition = os.environ.get(PARTITION_ENV)
    if not partition:
        pytest.skip(SKIP_SLURM)
    assert shutil.which("sbatch"), "sbatch not on PATH although a SLURM cluster is configured"
    done = subprocess.run(
        ["sinfo", "-h", "-p", partition, "-o", "%t"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, f"sinfo failed: {done.stderr.strip()}"
    states = done.stdout.split()
    assert states and set(states) <= {"idle", "mix", "alloc"}, f"node states: {states}"
    return partition
