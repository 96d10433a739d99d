"""Store the simulated AGIPD-1M's correction constants for ``gui-topology.toml``.

The example topology corrects the simulated detector with the real correction devices
(``DetectorCorrection``, one per module), which take their constants from the calibration
catalogue.  At a facility they come from dark runs (``pulsetrain dark``) and gain scans; the
simulator knows its true constants, so this script stores those — the same step ``pulsetrain
demo`` runs before it starts, with the topology's operating conditions (4 memory cells, seed 0).
Modules already in the catalogue are left as they are.

    python examples/scenes/store_constants.py              # the default catalogue
    python examples/scenes/store_constants.py CATALOGUE    # a path or URL; then run with
                                                           # PULSETRAIN_CATALOG=CATALOGUE

The default catalogue is ``$PULSETRAIN_CATALOG``, else ``~/.local/share/pulsetrain/catalog.sqlite``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

#: What the topology's simulator and correction devices run with.
FRAMES = 4
SEED = 0


def store(catalogue: str | None = None, say=print) -> str:
    """Store the constants (if missing) in ``catalogue`` (None: the default); its URL."""
    from pulsetrain.catalog.engine import resolve_url
    from pulsetrain.demo import DemoOptions, prepare_catalog

    url = resolve_url(catalogue)
    if url.startswith("sqlite:///"):
        Path(url[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
    opts = DemoOptions(frames=FRAMES, seed=SEED, modules=list(range(16)), gui=False)
    prepare_catalog(opts, url, say)
    return url


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "catalogue", nargs="?", default=None, help="path or URL (default: the default catalogue)"
    )
    args = parser.parse_args(argv)
    from pulsetrain.errors import PulsetrainError

    try:
        store(args.catalogue)
    except (PulsetrainError, OSError) as exc:  # a script for users: one line, not a traceback
        print(f"store_constants: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
