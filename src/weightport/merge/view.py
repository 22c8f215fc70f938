"""A merged LoRA model as a set of random-access files, computed on demand, never stored.

:func:`merged_files` maps each relative path of the merged model directory to a
:class:`~weightport.storage.base.ByteSource`. Files without weights (config, tokenizer, the
shard index) and shards the adapter does not touch are the base's own sources. Every other
shard is a :class:`MergedShard`: its header is the base shard's header byte for byte (same
names, dtypes, shapes and offsets, so every size is known before any arithmetic), untouched
tensors are copied from the base, ``modules_to_save`` tensors come from the adapter, and
LoRA-adapted weights are merged on the fly, a block of rows at a time, only for the rows a
read touches.

Memory per shard stays around ``(prefetch_blocks + 3) × block_bytes`` plus the prepared LoRA
deltas of a few weights (:class:`~weightport.merge.tensor.LoraDelta`: the factors, a float64
copy and their norms, about 1.8 MB for a 2048 × 5632 weight at rank 16), whatever the size of
the model or of a read. Each block is one buffer: the weight rows are read into it and merged
in place. A sequential reader finds the next blocks already being computed on the executor
while it sends the current one. (More parallelism was measured and dropped: on the 2-vCPU
machines this project runs on, a second merge thread competes with the sending itself and with
the client.) Reads are thread-safe: concurrent readers of one block wait for a single
computation.
"""

from __future__ import annotations

import bisect
import itertools
import os
import threading
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from concurrent.futures import Executor, ThreadPoolExecutor

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
from weightport.storage.base import ByteSource

__all__ = ["MergeSummary", "MergedShard", "merged_files", "validate_merge"]

#: Bytes of merged output computed and cached as one unit.
BLOCK_BYTES = 4 << 20
#: Blocks computed ahead of a sequential reader, overlapping the merge with its sending.
PREFETCH_BLOCKS = 1
_CACHE_BLOCKS = 3  # besides the prefetched ones: room for a few concurrent readers
_FACTOR_CACHE = 4
_CONVERT_ELEMENTS = 1 << 20

_shared_executor: ThreadPoolExecutor | None = None
_shared_lock = threading.Lock()


def default_executor() -> Executor:
    """The process-wide pool merged shards prefetch on (one thread per core, at most 4)."""
    global _shared_executor
    with _shared_lock:
        if _shared_executor is None:
            _shared_executor = ThreadPoolExecutor(
                max_workers=min(4, os.cpu_count() or 1), thread_name_prefix="weightport-merge"
            )
        return _shared_executor


def merged_files(
    base: Mapping[str, ByteSource],
    adapter: Mapping[str, ByteSource],
    *,
    executor: Executor | None = None,
    block_bytes: int = BLOCK_BYTES,
    prefetch_blocks: int = PREFETCH_BLOCKS,
) -> dict[str, ByteSource]:
    """The files of the merged model: relative path → source of its bytes, sorted by path.

    Validates first (see :func:`validate_merge`); raises InvalidArgument naming the problem.
    Adapter files are not part of the result; base weights in other formats are dropped.
    """
    plan = plan_merge(base, adapter)
    files: dict[str, ByteSource] = dict(plan.passthrough)
    for path, shard in plan.shards.items():
        if shard.targets or shard.replacements:
            files[path] = MergedShard(
                shard, executor=executor, block_bytes=block_bytes, prefetch_blocks=prefetch_blocks
            )
        else:
            files[path] = shard.base
    return dict(sorted(files.items()))


class _Slot:
    """A block being computed: waiters block until the value (or the error) is set."""

    def __init__(self) -> None:
        self._done = threading.Event()
        self._value: bytes | bytearray | None = None
        self._error: BaseException | None = None

    def set(self, value: bytes | bytearray) -> None:
        self._value = value
        self._done.set()

    def fail(self, error: BaseException) -> None:
        self._error = error
        self._done.set()

    def get(self) -> memoryview:
        self._done.wait()
        if self._error is not None:
            raise self._error
        assert self._value is not None  # set() ran: internal invariant, not user input
        return memoryview(self._value)  # slices of a view copy nothing


class MergedShard:
    """A base safetensors shard with the adapter merged in, as a random-access ByteSource."""

    def __init__(
        self,
        plan: ShardPlan,
        *,
        executor: Executor | None = None,
        block_bytes: int = BLOCK_BYTES,
        prefetch_blocks: int = PREFETCH_BLOCKS,
    ) -> None:
        self._plan = plan
        self._tensors = plan.header.tensors
        self._begins = [t.begin for t in self._tensors]
        self._executor = executor if executor is not None else default_executor()
        self._block_bytes = max(1, block_bytes)
        self._lock = threading.Lock()
        self._blocks: OrderedDict[tuple[str, int], _Slot] = OrderedDict()
        self._deltas: OrderedDict[str, LoraDelta] = OrderedDict()
        self._prefetch_depth = max(0, prefetch_blocks)
        self._cache_blocks = self._prefetch_depth + _CACHE_BLOCKS
        self._inflight = 0
        self._position = {t.name: i for i, t in enumerate(self._tensors)}

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

    def _rows_per_block(self, t: TensorInfo) -> int:
        return max(1, self._block_bytes // (t.shape[1] * t.itemsize))

    def _read_target(self, target: LoraTarget, lo: int, hi: int, dest: memoryview) -> None:
        t = target.base
        span = self._rows_per_block(t) * t.shape[1] * t.itemsize
        first = (lo - t.begin) // span
        last = (hi - 1 - t.begin) // span
        for b in range(first, last + 1):
            data = self._block(target, b)
            start = t.begin + b * span
            s, e = max(lo, start), min(hi, start + len(data))
            dest[s - lo : e - lo] = data[s - start : e - start]
        self._prefetch_after(target, last)

    def _block(self, target: LoraTarget, b: int) -> memoryview:
        key = (target.base.name, b)
        with self._lock:
            slot = self._blocks.get(key)
            owner = slot is None
            if slot is None:
                slot = self._remember(key)
            else:
                self._blocks.move_to_end(key)
        if owner:
            self._fill(slot, key, target, b)
        return slot.get()

    def _remember(self, key: tuple[str, int]) -> _Slot:
        slot = _Slot()
        self._blocks[key] = slot
        while len(self._blocks) > self._cache_blocks:
            self._blocks.popitem(last=False)
        return slot

    def _fill(self, slot: _Slot, key: tuple[str, int], target: LoraTarget, b: int) -> None:
        try:
            slot.set(self._compute_block(target, b))
        except BaseException as exc:
            with self._lock:
                if self._blocks.get(key) is slot:
                    del self._blocks[key]
            slot.fail(exc)

    def _prefetch_after(self, target: LoraTarget, b: int) -> None:
        """Start computing the next blocks a sequential reader will want, up to the depth."""
        for nxt, k in itertools.islice(self._blocks_after(target, b), self._prefetch_depth):
            key = (nxt.base.name, k)
            with self._lock:
                if key in self._blocks:
                    continue
                if self._inflight >= self._prefetch_depth:
                    return
                self._inflight += 1
                slot = self._remember(key)
            try:
                self._executor.submit(self._run_prefetch, slot, key, nxt, k)
            except RuntimeError as exc:  # the executor is shut down: prefetching is optional
                with self._lock:
                    self._inflight -= 1
                    if self._blocks.get(key) is slot:
                        del self._blocks[key]
                slot.fail(exc)
                return

    def _blocks_after(self, target: LoraTarget, b: int) -> Iterator[tuple[LoraTarget, int]]:
        """Blocks of merged weights in file order after block ``b`` of ``target``."""
        yield from ((target, k) for k in range(b + 1, self._block_count(target.base)))
        for t in itertools.islice(self._tensors, self._position[target.base.name] + 1, None):
            following = self._plan.targets.get(t.name)
            if following is not None:
                yield from ((following, k) for k in range(self._block_count(t)))

    def _block_count(self, t: TensorInfo) -> int:
        return -(-t.shape[0] // self._rows_per_block(t))

    def _run_prefetch(self, slot: _Slot, key: tuple[str, int], target: LoraTarget, b: int) -> None:
        try:
            self._fill(slot, key, target, b)
        finally:
            with self._lock:
                self._inflight -= 1

    def _compute_block(self, target: LoraTarget, b: int) -> bytearray:
        t = target.base
        per_block = self._rows_per_block(t)
        r0 = b * per_block
        r1 = min(t.shape[0], r0 + per_block)
        delta = self._delta(target)
        # One buffer per block: the weight rows are read into it and merged in place.
        block = bytearray((r1 - r0) * t.shape[1] * t.itemsize)
        rows = np.frombuffer(block, dtype=storage_dtype(t.dtype)).reshape(r1 - r0, t.shape[1])
        src = target.weight_source
        if src is None:
            self._plan.base.readinto(t.begin + r0 * t.shape[1] * t.itemsize, memoryview(block))
            delta.merge_rows(rows, r0, out=rows)
        else:
            delta.merge_rows(self._adapter_rows(src, t, r0, r1), r0, out=rows)
        return block

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
        name = target.base.name
        with self._lock:
            cached = self._deltas.get(name)
            if cached is not None:
                self._deltas.move_to_end(name)
                return cached
        left, right = lora_factors(
            self._read_factor(target.a), self._read_factor(target.b), transposed=target.transposed
        )
        delta = LoraDelta.prepare(
            left, right, target.scaling, dtype=target.base.dtype, round_delta=target.round_delta
        )
        with self._lock:
            self._deltas[name] = delta
            while len(self._deltas) > _FACTOR_CACHE:
                self._deltas.popitem(last=False)
        return delta

    def _read_factor(self, info: TensorInfo) -> F32:
        raw = bytearray(info.nbytes)
        self._plan.adapter.readinto(info.begin, memoryview(raw))
        values = to_float32(np.frombuffer(raw, dtype=storage_dtype(info.dtype)), info.dtype)
        return values.reshape(info.shape)
