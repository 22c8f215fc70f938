"""A merged LoRA model as a set of random-access files, computed on demand, never stored.

:func:`merged_files` maps each relative path of the merged model directory to a
:class:`~weightport.storage.base.ByteSource`. Files without weights (config, tokenizer, the
shard index) and shards the adapter does not touch are the base's own sources. Every other
shard is a :class:`MergedShard`: its header is the base shard's header byte for byte (same
names, dtypes, shapes and offsets, so every size is known before any arithmetic), untouched
tensors are copied from the base, ``modules_to_save`` tensors come from the adapter, and
LoRA-adapted weights are merged on the fly, only for the rows a read touches.

A read is computed where it lands: the base rows are read straight into the caller's buffer
and merged there in place (:mod:`weightport.merge.kernel`), so the merged bytes are never
copied. Only a row the read covers in part is merged on the side (one row per thread is kept,
since consecutive reads share their boundary row). Nothing else is kept between reads but the
prepared LoRA factors of recently merged weights, in one process-wide cache bounded in bytes
(:data:`DELTA_CACHE_BYTES`): memory does not grow with the model, the number of open views or
of readers. Reads are thread-safe and independent, so reading ahead on several threads (the
server's read-ahead pool does) computes several parts of a shard in parallel.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping

import numpy as np
import numpy.typing as npt

from weightport.merge.plan import LoraTarget, MergeSummary, Replacement, ShardPlan, plan_merge
from weightport.merge.plan import validate_merge as validate_merge
from weightport.merge.safetensors_format import TensorInfo
from weightport.merge.tensor import (
    F32,
    LoraDelta,
    from_float32,
    lora_factors,
    storage_dtype,
    to_float32,
)
from weightport.observability import metrics
from weightport.storage.base import ByteSource

__all__ = ["DELTA_CACHE_BYTES", "MergeSummary", "MergedShard", "merged_files", "validate_merge"]

#: Bytes of prepared LoRA factors kept for reuse, over all views of the process (a rank-16
#: factor pair of a 5632 x 2048 weight is 0.5 MB; re-reading one costs ~0.1 ms).
DELTA_CACHE_BYTES = 64 << 20
_CONVERT_ELEMENTS = 1 << 20


def merged_files(
    base: Mapping[str, ByteSource], adapter: Mapping[str, ByteSource]
) -> dict[str, ByteSource]:
    """The files of the merged model: relative path → source of its bytes, sorted by path.

    Validates first (see :func:`validate_merge`); raises InvalidArgument naming the problem.
    Adapter files are not part of the result; base weights in other formats are dropped.
    """
    plan = plan_merge(base, adapter)
    files: dict[str, ByteSource] = dict(plan.passthrough)
    for path, shard in plan.shards.items():
        files[path] = MergedShard(shard) if shard.targets or shard.replacements else shard.base
    return dict(sorted(files.items()))


class _DeltaCache:
    """Prepared LoRA deltas, least recently used first out, within a byte budget."""

    def __init__(self, budget: int) -> None:
        self._budget = budget
        self._held = 0
        self._lock = threading.Lock()
        self._deltas: OrderedDict[tuple[object, str], LoraDelta] = OrderedDict()

    def get(self, key: tuple[object, str]) -> LoraDelta | None:
        with self._lock:
            delta = self._deltas.get(key)
            if delta is not None:
                self._deltas.move_to_end(key)
            return delta

    def put(self, key: tuple[object, str], delta: LoraDelta) -> None:
        with self._lock:
            if key in self._deltas:
                return
            self._deltas[key] = delta
            self._held += delta.nbytes
            while self._held > self._budget and len(self._deltas) > 1:
                _, old = self._deltas.popitem(last=False)
                self._held -= old.nbytes

    @property
    def held(self) -> int:
        """Bytes of factors held now."""
        return self._held


_deltas = _DeltaCache(DELTA_CACHE_BYTES)


class _Row:
    """One merged row, kept per thread: reads that split a row share it."""

    def __init__(self, key: tuple[object, str, int], data: bytearray) -> None:
        self.key = key
        self.data = data


_last_row = threading.local()


class MergedShard:
    """A base safetensors shard with the adapter merged in, as a random-access ByteSource."""

    def __init__(self, plan: ShardPlan) -> None:
        self._plan = plan
        self._tensors = plan.header.tensors
        self._begins = [t.begin for t in self._tensors]
        self._key = object()  # names this view in the process-wide caches

    @property
    def size(self) -> int:
        return self._plan.header.file_size

    @property
    def path(self) -> str:
        return self._plan.path

    def readinto(self, offset: int, buf: memoryview) -> None:
        """Fill ``buf`` with bytes ``[offset, offset + len(buf))`` of the merged shard."""
        out = memoryview(buf).cast("B")
        end = offset + len(out)
        if offset < 0 or end > self.size:
            raise ValueError(f"read [{offset}, {end}) outside 0..{self.size}")
        prefix = self._plan.header.prefix
        pos = offset
        if pos < len(prefix):
            stop = min(end, len(prefix))
            out[: stop - pos] = prefix[pos:stop]
            pos = stop
        run_start = pos  # a run of untouched tensors is read from the base in one go
        i = max(0, bisect.bisect_right(self._begins, pos) - 1)
        while pos < end:
            t = self._tensors[i]
            i += 1
            if t.end <= pos:
                continue
            stop = min(end, t.end)
            target = self._plan.targets.get(t.name)
            replacement = self._plan.replacements.get(t.name)
            if target is not None or replacement is not None:
                self._copy_base(run_start, pos, out, offset)
                dest = out[pos - offset : stop - offset]
                if target is not None:
                    self._read_target(target, pos, stop, dest)
                elif replacement is not None:
                    self._read_replacement(replacement, pos, stop, dest)
                run_start = stop
            pos = stop
        self._copy_base(run_start, end, out, offset)

    # -- pieces ------------------------------------------------------------------------

    def _copy_base(self, start: int, stop: int, out: memoryview, offset: int) -> None:
        if stop > start:
            self._plan.base.readinto(start, out[start - offset : stop - offset])

    def _read_replacement(self, rep: Replacement, lo: int, hi: int, dest: memoryview) -> None:
        src, t = rep.source, rep.base
        if src.dtype == t.dtype:
            self._plan.adapter.readinto(src.begin + (lo - t.begin), dest)
            return
        # Cast element-wise as torch's copy_ into the base parameter does (via float32).
        item = t.itemsize
        first = (lo - t.begin) // item
        last = -(-(hi - t.begin) // item)
        for e0 in range(first, last, _CONVERT_ELEMENTS):
            e1 = min(last, e0 + _CONVERT_ELEMENTS)
            raw = bytearray((e1 - e0) * src.itemsize)
            self._plan.adapter.readinto(src.begin + e0 * src.itemsize, memoryview(raw))
            values = to_float32(np.frombuffer(raw, dtype=storage_dtype(src.dtype)), src.dtype)
            converted = from_float32(values, t.dtype).tobytes()
            chunk_start = t.begin + e0 * item
            s, e = max(lo, chunk_start), min(hi, chunk_start + len(converted))
            dest[s - lo : e - lo] = converted[s - chunk_start : e - chunk_start]

    def _read_target(self, target: LoraTarget, lo: int, hi: int, dest: memoryview) -> None:
        """Merged bytes ``[lo, hi)`` (file offsets inside ``target``'s weight) into ``dest``:
        whole rows in place, a row cut by either end through :meth:`_row`."""
        t = target.base
        row_bytes = t.shape[1] * t.itemsize
        first = -(-(lo - t.begin) // row_bytes)  # the first row that starts inside
        last = (hi - t.begin) // row_bytes  # the row after the last one that ends inside
        if first > last:  # inside one row
            row = (lo - t.begin) // row_bytes
            start = t.begin + row * row_bytes
            dest[:] = self._row(target, row)[lo - start : hi - start]
            return
        head = t.begin + first * row_bytes - lo  # bytes of a cut row before the whole rows
        if head:
            dest[:head] = self._row(target, first - 1)[row_bytes - head :]
        if last > first:
            rows = dest[head : head + (last - first) * row_bytes]
            self._merge_into(target, first, last, rows)
        tail = hi - (t.begin + last * row_bytes)
        if tail:
            dest[len(dest) - tail :] = self._row(target, last)[:tail]

    def _row(self, target: LoraTarget, row: int) -> memoryview:
        """One merged row as bytes, from this thread's one-row cache if it is that row."""
        key = (self._key, target.base.name, row)
        cached: _Row | None = getattr(_last_row, "row", None)
        if cached is None or cached.key != key:
            data = bytearray(target.base.shape[1] * target.base.itemsize)
            self._merge_into(target, row, row + 1, memoryview(data))
            cached = _last_row.row = _Row(key, data)
        return memoryview(cached.data)

    def _merge_into(self, target: LoraTarget, r0: int, r1: int, dest: memoryview) -> None:
        """Merged rows ``[r0, r1)`` of ``target`` into ``dest`` (exactly their bytes)."""
        started = time.perf_counter()
        t = target.base
        cols = t.shape[1]
        rows = np.frombuffer(dest, dtype=storage_dtype(t.dtype)).reshape(r1 - r0, cols)
        delta = self._delta(target)
        src = target.weight_source
        if src is None:
            self._plan.base.readinto(t.begin + r0 * cols * t.itemsize, dest)
            delta.merge_rows(rows, r0, out=rows)
        else:
            delta.merge_rows(self._adapter_rows(src, t, r0, r1), r0, out=rows)
        metrics.MERGE_SECONDS.inc(time.perf_counter() - started)
        metrics.MERGE_BYTES.inc(len(dest))

    def _adapter_rows(
        self, src: TensorInfo, t: TensorInfo, r0: int, r1: int
    ) -> npt.NDArray[np.generic]:
        """Rows ``[r0, r1)`` of a weight the adapter carries, cast to the base's dtype."""
        cols = t.shape[1]
        raw = bytearray((r1 - r0) * cols * src.itemsize)
        self._plan.adapter.readinto(src.begin + r0 * cols * src.itemsize, memoryview(raw))
        rows = np.frombuffer(raw, dtype=storage_dtype(src.dtype)).reshape(r1 - r0, cols)
        if src.dtype == t.dtype:
            return rows
        return from_float32(to_float32(rows, src.dtype), t.dtype)

    def _delta(self, target: LoraTarget) -> LoraDelta:
        key = (self._key, target.base.name)
        delta = _deltas.get(key)
        if delta is None:
            left, right = lora_factors(
                self._read_factor(target.a),
                self._read_factor(target.b),
                transposed=target.transposed,
            )
            delta = LoraDelta.prepare(
                left,
                right,
                target.scaling,
                dtype=target.base.dtype,
                round_delta=target.round_delta,
            )
            _deltas.put(key, delta)
        return delta

    def _read_factor(self, info: TensorInfo) -> F32:
        raw = bytearray(info.nbytes)
        self._plan.adapter.readinto(info.begin, memoryview(raw))
        values = to_float32(np.frombuffer(raw, dtype=storage_dtype(info.dtype)), info.dtype)
        return values.reshape(info.shape)
