"""The pieces behind slow-client handling, one by one: the per-account slots, idle plans
being forgotten, the settings that drive them, and the 429's headers."""

from __future__ import annotations

import asyncio
import time
from contextlib import ExitStack
from pathlib import Path

import pytest

from weightport.catalog.schema import Checkpoint, CheckpointFile, FineTune
from weightport.config import load_settings
from weightport.errors import InvalidArgument, TooManyRequests
from weightport.ingest import store_data
from weightport.server.download_slots import RETRY_AFTER_S, DownloadSlots
from weightport.server.envelopes import Dialect, error_response
from weightport.server.memory import MemoryReturn
from weightport.services.finetune_archives import PlanCache, Selection
from weightport.storage.local import LocalStore


def test_slots_cap_each_account_and_come_back() -> None:
    released: list[int] = []
    slots = DownloadSlots(2, on_release=lambda: released.append(1))
    with slots.hold("a"), slots.hold("a"):
        with pytest.raises(TooManyRequests) as refused, slots.hold("a"):
            pass
        assert refused.value.retry_after == RETRY_AFTER_S
        with slots.hold("b"):  # another account is not affected
            assert slots.active("b") == 1
        assert slots.active("a") == 2
    assert slots.active("a") == 0 and len(released) == 3
    with slots.hold("a"):
        pass


def test_a_failing_download_gives_its_slot_back() -> None:
    slots = DownloadSlots(1)
    with pytest.raises(ConnectionResetError), slots.hold("a"):
        raise ConnectionResetError
    with slots.hold("a"):
        assert slots.active("a") == 1


def test_zero_means_no_cap() -> None:
    slots = DownloadSlots(0)
    with ExitStack() as stack:
        for _ in range(100):
            stack.enter_context(slots.hold("a"))
        assert slots.active("a") == 100


def test_429_carries_retry_after_in_every_envelope() -> None:
    error = TooManyRequests("busy", retry_after=7)
    for dialect in Dialect:
        response = error_response(error, dialect)
        assert response.status == 429
        assert response.headers["Retry-After"] == "7"
        assert response.headers["retry-after-ms"] == "7000"
        if dialect is Dialect.HUB:  # huggingface_hub reads headers, not bodies
            assert response.headers["X-Error-Code"] == "TooManyRequests"
            assert response.headers["X-Error-Message"] == "busy"
        else:
            assert response.headers["x-should-retry"] == "true"


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _selection(store: LocalStore, pk: int) -> tuple[FineTune, Selection]:
    blob = store_data(store, f"adapter weights {pk}".encode())
    checkpoint = Checkpoint(pk=pk, step=pk, kind="final")
    checkpoint.files.append(
        CheckpointFile(artifact="adapter", path="a.bin", size=blob.size, sha256=blob.key)
    )
    job = FineTune(id=f"ft-{pk}", model_output_name="o/n", checkpoints=[checkpoint])
    return job, Selection("adapter", checkpoint, f"top-{pk}")


def test_plan_cache_forgets_idle_plans_only(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    clock = _Clock()
    cache = PlanCache(clock=clock)
    first, second = _selection(store, 1), _selection(store, 2)
    plan_one = cache.get(store, *first)
    clock.now += 50
    plan_two = cache.get(store, *second)
    clock.now += 20
    assert cache.drop_idle(60) == 1  # the first was last asked for 70 s ago
    assert len(cache) == 1
    assert cache.get(store, *second) is plan_two  # still cached
    assert cache.get(store, *first) is not plan_one  # planned again
    clock.now += 61
    assert cache.drop_idle(60) == 2 and len(cache) == 0


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("send_timeout", "0"),
        ("body_timeout", "-1"),
        ("header_timeout", "0"),
        ("max_computed_downloads", "-1"),
    ],
)
def test_bad_timeout_and_cap_settings_are_refused(name: str, value: str) -> None:
    with pytest.raises(InvalidArgument, match=name):
        load_settings(environ={f"WEIGHTPORT_{name.upper()}": value, "WEIGHTPORT_CONFIG": "/x"})


def test_timeout_and_cap_defaults() -> None:
    settings = load_settings(environ={"WEIGHTPORT_CONFIG": "/nonexistent"})
    assert (settings.header_timeout, settings.body_timeout, settings.send_timeout) == (60, 60, 60)
    assert settings.max_computed_downloads == 16


def test_memory_is_returned_once_downloads_stop_ending(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    plans = PlanCache()
    memory = MemoryReturn(plans, delay_s=1.0, plan_idle_s=0)

    async def scenario() -> tuple[list[int], float]:
        plans.get(store, *_selection(store, 1))
        seen = []
        for _ in range(5):  # a run of ends, closer together than the delay
            memory.download_ended()
            await asyncio.sleep(0.05)
            seen.append(len(plans))
        last_end = time.monotonic()
        while plans:  # returned (idle plans dropped) once the ends stop
            await asyncio.sleep(0.05)
        memory.close()
        return seen, time.monotonic() - last_end

    seen, after = asyncio.run(scenario())
    assert seen == [1, 1, 1, 1, 1]  # nothing returned while ends keep coming
    assert after >= 0.9  # and then about one delay after the last end
