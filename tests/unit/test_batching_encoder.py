"""The serving encoder batches concurrent requests without mixing their results."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from fusion_model.serving.searcher import BatchingEncoder


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
