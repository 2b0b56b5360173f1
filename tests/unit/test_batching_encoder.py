"""The serving encoder batches concurrent requests without mixing their results, and the
query cache answers repeated texts without the encoder."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from fusion_model.serving.searcher import BatchingEncoder, QueryCache


def slow_encoder(calls: list[int]):
    def encode(texts: list[str]) -> np.ndarray:
        calls.append(len(texts))
        time.sleep(0.05)
        return np.array([[float(t.split("-")[1])] for t in texts], dtype=np.float32)
    return encode


def run_concurrently(encoder, requests: list[list[str]]) -> list:
    results: list = [None] * len(requests)

    def call(i: int) -> None:
        try:
            results[i] = encoder(requests[i])
        except Exception as error:  # noqa: BLE001 - the test inspects it
            results[i] = error
    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(requests))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    return results


def test_concurrent_requests_share_forward_passes_and_get_their_own_vectors():
    calls: list[int] = []
    encoder = BatchingEncoder(slow_encoder(calls), max_batch=8)
    requests = [[f"q-{i}"] if i % 3 else [f"q-{i}", f"q-{i + 1000}"] for i in range(30)]
    results = run_concurrently(encoder, requests)
    for request, vectors in zip(requests, results):
        assert vectors.tolist() == [[float(t.split("-")[1])] for t in request]
    assert sum(calls) == sum(map(len, requests)) and max(calls) <= 8
    assert len(calls) < len(requests)  # batched under load


def test_two_encoder_runs_overlap_and_every_request_gets_its_own_vectors():
    running, most = [0], [0]
    lock = threading.Lock()

    def encode(texts: list[str]) -> np.ndarray:
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.05)
        with lock:
            running[0] -= 1
        return np.array([[float(t.split("-")[1])] for t in texts], dtype=np.float32)

    encoder = BatchingEncoder(encode, max_batch=4, concurrency=2)
    requests = [[f"q-{i}"] for i in range(24)]
    results = run_concurrently(encoder, requests)
    assert [r.tolist() for r in results] == [[[float(i)]] for i in range(24)]
    assert most[0] == 2


def test_a_lone_request_is_encoded_at_once():
    calls: list[int] = []
    encoder = BatchingEncoder(slow_encoder(calls))
    assert encoder(["q-7"]).tolist() == [[7.0]] and calls == [1]


def test_an_encoder_error_reaches_every_request_of_the_batch():
    def broken(texts):
        time.sleep(0.05)
        raise RuntimeError("encoder crashed")
    results = run_concurrently(BatchingEncoder(broken), [["a-1"]] * 6)
    assert all(isinstance(r, RuntimeError) for r in results)
    with pytest.raises(RuntimeError, match="encoder crashed"):
        BatchingEncoder(broken)(["a-1"])


def counting_encoder(seen: list[str]):
    def encode(texts: list[str]) -> np.ndarray:
        seen.extend(texts)
        return np.array([[float(t.split("-")[1]), len(t)] for t in texts], dtype=np.float32)
    return encode


def test_the_query_cache_encodes_each_text_once_and_forgets_the_oldest():
    seen: list[str] = []
    cache = QueryCache(counting_encoder(seen), size=2)
    first = cache(["a-1", "a-2", "a-1"])
    assert seen == ["a-1", "a-2"]                       # a repeat in one call: encoded once
    assert first[:, 0].tolist() == [1.0, 2.0, 1.0]
    assert cache(["a-2", "a-1"])[:, 0].tolist() == [2.0, 1.0] and len(seen) == 2
    cache(["a-3"])                                      # evicts a-2, the least recently used
    cache(["a-1", "a-2"])
    assert seen == ["a-1", "a-2", "a-3", "a-2"]
    assert (cache.stats.hits, cache.stats.misses) == (4, 4)


def test_the_query_cache_is_consistent_under_concurrent_requests():
    seen: list[str] = []
    cache = QueryCache(BatchingEncoder(counting_encoder(seen)), size=100)
    requests = [[f"q-{i % 5}", f"q-{(i + 1) % 5}"] for i in range(40)]
    results = run_concurrently(cache, requests)
    for request, vectors in zip(requests, results):
        assert vectors[:, 0].tolist() == [float(t.split("-")[1]) for t in request]
    assert cache.stats.hits + cache.stats.misses == 80 and len(set(seen)) == 5
