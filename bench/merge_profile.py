"""Where the CPU of a merged download goes, without HTTP: the stored archive of a merged model
read front to back in 1 MiB chunks on one thread (the server's read path), under cProfile
with a CPU-time clock, grouped into the steps of the merge.

The model is ``bench.merge_data``'s (``--quick`` size by default: 0.26 GiB, rank 16 on all
linear layers), its files put in a local blob store as the server keeps them. ``--src``
profiles another source tree (e.g. an export of the previous commit) in a child process.
cProfile adds a fixed cost per Python call, so Python-heavy steps are overstated; the table
also gives the CPU time of an unprofiled pass.

    .venv/bin/python -m bench.merge_profile [--full] [--src DIR]
"""

from __future__ import annotations

import argparse
import cProfile
import hashlib
import json
import os
import pstats
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.common import MiB, python_child, scratch_dir
from bench.merge_data import FULL, QUICK, make_adapter, make_base

#: (file name, function name or "*") → step; the first match wins. Both the current code and
#: the previous (bracketed NumPy) code are covered.
STEPS: list[tuple[str, str, str]] = [
    ("kernel.py", "*", "merge arithmetic: compiled FMA product + add + round"),
    ("bracket.py", "_settle", "merge arithmetic: BLAS product, bounds, widen/round passes"),
    ("bracket.py", "_unsettled", "merge arithmetic: finding unsettled elements"),
    ("bracket.py", "_recompute", "merge arithmetic: exact FMA fallback"),
    ("fma.py", "*", "merge arithmetic: exact FMA fallback"),
    ("rounding.py", "*", "merge arithmetic: dtype conversions"),
    ("~", "<built-in method posix.preadv>", "reading the base (pread)"),
    ("~", "<built-in method posix.open>", "reading the base (pread)"),
    ("local.py", "*", "reading the base (pread)"),
    ("base.py", "*", "reading the base (pread)"),
    ("stored.py", "*", "archive framing (raw blocks, headers, moves)"),
    ("plan.py", "readinto", "archive framing (raw blocks, headers, moves)"),
    ("view.py", "*", "view: rows, copies, caches, bookkeeping"),
    ("tensor.py", "*", "view: rows, copies, caches, bookkeeping"),
]

_CHILD = r"""
import json, sys
from bench.merge_profile import profile
print(json.dumps(profile(sys.argv[1])))
"""


def _step(path: str, function: str) -> str:
    name = os.path.basename(path)
    for file, func, step in STEPS:
        if (file == name or (file == "~" and path == "~")) and func in ("*", function):
            return step
    return "other Python (dispatch, numpy calls, allocation)"


def profile(model_dir: str) -> dict[str, Any]:
    """Profile one pass (after an unprofiled warm-up pass); CPU seconds per step."""
    from weightport.archive import ArchiveMember, ArchivePlan, stored_archive
    from weightport.merge import merged_files
    from weightport.storage.base import BlobSource
    from weightport.storage.local import LocalStore

    root = Path(model_dir)
    store = LocalStore(root / "store")
    manifest = json.loads((root / "manifest.json").read_text())
    sources = {
        part: {name: BlobSource(store, key, size) for name, (key, size) in files.items()}
        for part, files in manifest.items()
    }
    try:  # the previous view computed blocks on a prefetch thread: keep it all on this one
        files = merged_files(sources["base"], sources["adapter"], prefetch_blocks=0)  # type: ignore[call-arg]
    except TypeError:
        files = merged_files(sources["base"], sources["adapter"])
    plan = ArchivePlan.build("m", [ArchiveMember(p, s, p) for p, s in files.items()])
    try:  # the single tar read is what the server uses for merged archives, where it exists
        archive = stored_archive(plan, single_tar_read=True)  # type: ignore[call-arg]
    except TypeError:
        archive = stored_archive(plan)
    buf = bytearray(MiB)

    def one_pass() -> None:
        for offset in range(0, archive.size, MiB):
            archive.readinto(offset, memoryview(buf)[: min(MiB, archive.size - offset)])

    one_pass()  # warm-up: compiling, caches
    began = time.thread_time()
    one_pass()
    plain = time.thread_time() - began
    profiler = cProfile.Profile(time.thread_time)
    profiler.enable()
    one_pass()
    profiler.disable()
    steps: dict[str, float] = {}
    stats: Any = pstats.Stats(profiler).stats
    for (path, _, function), (_, _, tottime, _, _) in stats.items():
        step = _step(path, function)
        steps[step] = steps.get(step, 0.0) + tottime
    return {"bytes": archive.size, "cpu_seconds": plain, "steps": steps}


def _prepare(root: Path, full: bool) -> None:
    from weightport.storage.local import LocalStore

    shape = FULL if full else QUICK
    make_base(root / "base", shape)
    make_adapter(root / "adapter", shape)
    store = LocalStore(root / "store")
    manifest: dict[str, dict[str, list[Any]]] = {}
    for part in ("base", "adapter"):
        manifest[part] = {}
        for path in sorted((root / part).iterdir()):
            data = path.read_bytes()
            with store.begin_upload() as upload:
                upload.write(data)
                info = upload.commit()
            assert info.key == hashlib.sha256(data).hexdigest()
            manifest[part][path.name] = [info.key, info.size]
    (root / "manifest.json").write_text(json.dumps(manifest))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.merge_profile", description=__doc__)
    parser.add_argument("--full", action="store_true", help="the 1 GiB model")
    parser.add_argument("--src", type=Path, default=None, help="profile this src/ tree")
    args = parser.parse_args(argv)
    with scratch_dir("merge_profile") as tmp:
        _prepare(tmp, args.full)
        result = python_child(_CHILD, [str(tmp)], args.src)
    gb = result["bytes"] / 1e9
    total = sum(result["steps"].values())
    print(f"unprofiled: {result['cpu_seconds'] / gb:.2f} core-s/GB ({gb:.2f} GB)\n")
    print("| step | share of profiled CPU | core-s/GB (profiled) |\n|---|---|---|")
    for step, seconds in sorted(result["steps"].items(), key=lambda kv: -kv[1]):
        print(f"| {step} | {100 * seconds / total:.0f} % | {seconds / gb:.2f} |")


if __name__ == "__main__":
    main()
