"""ModelPool: load on first use, warm up once, LRU eviction under a byte budget, thread safety."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from models.pool import ModelPool


class FakeModel:
    def __init__(self, key: str) -> None:
        self.key = key
        self.warmed = 0
        self.released = False


class Recorder:
    def __init__(self, sizes: dict[str, int]) -> None:
        self.sizes = sizes
        self.loaded: list[str] = []
        self.released: list[str] = []
        self.lock = threading.Lock()

    def load(self, key: str) -> FakeModel:
        with self.lock:
            self.loaded.append(key)
        return FakeModel(key)

    def size(self, key: str) -> int:
        return self.sizes[key]

    def release(self, model: FakeModel) -> None:
        model.released = True
        self.released.append(model.key)

    def pool(self, budget: int) -> ModelPool[str, FakeModel]:
        def warm(m: FakeModel) -> None:
            m.warmed += 1

        return ModelPool(budget, self.load, self.size, warm_up=warm, release=self.release)


def test_loads_once_and_warms_up_once() -> None:
    rec = Recorder({"a": 10})
    pool = rec.pool(100)
    first = pool.get("a")
    assert pool.get("a") is first
    assert rec.loaded == ["a"] and first.warmed == 1
    stats = pool.stats()
    assert (stats.loads, stats.hits, stats.used_bytes) == (1, 1, 10)


def test_evicts_least_recently_used_to_fit_budget() -> None:
    rec = Recorder({"a": 40, "b": 40, "c": 40})
    pool = rec.pool(100)
    a = pool.get("a")
    pool.get("b")
    pool.get("a")  # a is now more recently used than b
    pool.get("c")  # 120 > 100: b goes, not a
    assert pool.keys() == ["a", "c"]
    assert rec.released == ["b"] and not a.released
    assert pool.used_bytes == 80 and pool.stats().evictions == 1
    pool.get("b")  # reloaded; now a is the least recently used
    assert pool.keys() == ["c", "b"]
    assert rec.loaded == ["a", "b", "c", "b"]


def test_room_is_made_before_loading() -> None:
    rec = Recorder({"a": 60, "b": 60})
    pool = rec.pool(100)
    pool.get("a")
    order: list[str] = []
    original_load = rec.load

    def load(key: str) -> FakeModel:
        order.append(f"load {key} with {pool.keys()}")
        return original_load(key)

    pool._load = load  # type: ignore[method-assign]
    pool.get("b")
    assert order == ["load b with []"]  # a was evicted before b's weights came in


def test_model_larger_than_budget_is_loaded_alone() -> None:
    rec = Recorder({"small": 10, "huge": 500})
    pool = rec.pool(100)
    pool.get("small")
    huge = pool.get("huge")
    assert pool.keys() == ["huge"] and huge.warmed == 1
    assert rec.released == ["small"]


def test_concurrent_gets_load_a_model_once() -> None:
    rec = Recorder({"a": 10})
    gate = threading.Event()
    original = rec.load

    def slow_load(key: str) -> FakeModel:
        gate.wait(5)
        return original(key)

    pool: ModelPool[str, FakeModel] = ModelPool(100, slow_load, rec.size)
    with ThreadPoolExecutor(8) as ex:
        futures = [ex.submit(pool.get, "a") for _ in range(8)]
        gate.set()
        models = {id(f.result(5)) for f in futures}
    assert len(models) == 1 and rec.loaded == ["a"]


def test_concurrent_loads_of_different_models_stay_within_the_budget() -> None:
    live: set[str] = set()
    peak = [0]
    guard = threading.Lock()
    both_asked = threading.Barrier(2)

    other_loading = threading.Event()

    def load(key: str) -> str:
        with guard:
            live.add(key)
            peak[0] = max(peak[0], 60 * len(live))
        if len(live) > 1:
            other_loading.set()
        other_loading.wait(0.5)  # the first load stays in flight long enough for the second to overlap it
        return key

    def release(model: str) -> None:
        with guard:
            live.discard(model)

    pool: ModelPool[str, str] = ModelPool(100, load, lambda _k: 60, release=release)

    def get(key: str) -> str:
        both_asked.wait()
        return pool.get(key)

    with ThreadPoolExecutor(2) as ex:
        assert sorted(ex.map(get, ["a", "b"])) == ["a", "b"]
    assert peak[0] <= 100  # the second load waited for the first to land, then evicted it
    assert pool.stats().used_bytes <= 100 and pool.stats().loads == 2


def test_failed_load_leaves_pool_usable() -> None:
    calls = {"n": 0}

    def flaky(key: str) -> FakeModel:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("disk hiccup")
        return FakeModel(key)

    pool: ModelPool[str, FakeModel] = ModelPool(100, flaky, lambda _k: 10)
    with pytest.raises(RuntimeError):
        pool.get("a")
    assert "a" not in pool
    assert pool.get("a").key == "a" and len(pool) == 1


def test_evict_and_clear_release_models() -> None:
    rec = Recorder({"a": 10, "b": 10})
    pool = rec.pool(100)
    pool.get("a")
    pool.get("b")
    assert pool.evict("a") and not pool.evict("a")
    pool.clear()
    assert len(pool) == 0 and sorted(rec.released) == ["a", "b"]


def test_budget_must_be_positive() -> None:
    with pytest.raises(ValueError):
        ModelPool(0, FakeModel, lambda _k: 1)
