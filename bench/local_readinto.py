"""CPU per ``LocalStore.readinto`` of 4 KiB from a blob whose descriptor is cached: the
local store's own cost per read, which merged reads pay once per run of rows.

    .venv/bin/python -m bench.local_readinto
    PYTHONPATH=BEFORE/src .venv/bin/python -m bench.local_readinto   # another source tree
"""

from __future__ import annotations

import os
import statistics
import time

from bench.common import MiB, scratch_dir
from weightport.storage.local import LocalStore

BLOB = 4 * MiB
READ = 4096
CALLS = 200_000
REPS = 5


def main() -> None:
    with scratch_dir("local_readinto") as tmp:
        store = LocalStore(tmp)
        try:
            with store.begin_upload() as upload:
                upload.write(os.urandom(BLOB))
                key = upload.commit().key
            buf = memoryview(bytearray(READ))
            runs = []
            for _ in range(REPS):
                start = time.process_time()
                for i in range(CALLS):
                    store.readinto(key, i * READ % BLOB, buf)
                runs.append((time.process_time() - start) / CALLS * 1e6)
        finally:
            store.close()
    shown = " ".join(f"{r:.2f}" for r in runs)
    print(f"readinto of {READ} B: {shown} us CPU per call; median {statistics.median(runs):.2f}")


if __name__ == "__main__":
    main()
