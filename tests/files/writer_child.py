"""Child process for the crash test: writes synthetic trains until killed.

Usage: python writer_child.py RUN_DIR SEQUENCE_TRAINS MODULES MAX_TRAINS
Prints "written <index>" after each train has been written (and flushed).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from synthetic import make_train

from pulsetrain.files import RunWriter


def main() -> None:
    run_dir, sequence_trains, modules, max_trains = sys.argv[1:5]
    writer = RunWriter(
        run_dir,
        sequence_trains=int(sequence_trains),
        flush_trains=1,
        min_free_bytes=0,
    )
    for i in range(int(max_trains)):
        _, data, meta = make_train(i, modules=int(modules), frames=[2, 1, 3])
        writer.write_train(data, meta)
        print(f"written {i}", flush=True)
    writer.close()
    print("closed", flush=True)


if __name__ == "__main__":
    main()
