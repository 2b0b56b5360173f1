"""One conformance suite for every ``VectorIndex`` backend.

A test module subclasses ``IndexConformance`` and provides the ``index`` fixture (an open
backend); the same assertions then run on the in-memory backend and Milvus Lite
(tests/integration/test_index_conformance.py) and on the real Milvus server
(tests/production/test_milvus_standalone.py).
"""

from __future__ import annotations

import time
import uuid

import numpy as np
import pytest

from fusion_model.errors import InvalidFilterError, VectorIndexError
from fusion_model.index.filters import to_milvus

DIM = 8
FIELDS = ["category", "colour"]


def unit_vectors(count: int, seed: int = 0) -> np.ndarray:
    vectors = np.random.default_rng(seed).normal(size=(count, DIM)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def eventually(check, timeout: float = 20.0):
    """``check()`` until it returns something truthy (a server's searches may lag its
    writes by a moment); its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.5)


class IndexConformance:
    """What the platform relies on from a backend; subclasses provide ``index``."""

    @pytest.fixture()
    def name(self) -> str:
        return f"products_m1_{uuid.uuid4().hex[:12]}"

    @pytest.fixture()
    def filled(self, index, name):
        """A collection of 6 products, two attributes, content hashes h0..h5."""
        index.create_collection(name, DIM, FIELDS, "FLAT", "IP")
        ids = [f"p{i}" for i in range(6)]
        index.write_rows(name, ids, unit_vectors(6), [f"h{i}" for i in range(6)],
                         {"category": ["shirt", "shirt", "dress", "dress", "boots", "boots"],
                          "colour": ["red", "navy blue", "red", 'say "hi"', "black", "red"]},
                         overwrite=False)
        assert index.count(name) == 6
        yield name
        for alias in index.aliases_of(name):
            index.drop_alias(alias)
        if index.has_collection(name):
            index.drop_collection(name)

    def search(self, index, name, vectors, k=10, expression="", fields=FIELDS):
        def found():
            hits = index.search(name, vectors, k, expression, fields)
            return hits if all(hits) else None
        return eventually(found)

    def test_collections_and_their_fields(self, index, filled):
        assert index.has_collection(filled) and filled in index.list_collections()
        assert {"product_id", "vector", "content_hash", *FIELDS} <= set(index.fields(filled))
        assert not index.has_collection(filled + "_missing")

    def test_a_slice_of_ids_reads_its_own_hashes_and_count(self, index, filled):
        """What one index shard reads: the rows of its products, not the collection."""
        assert index.existing_hashes(filled, ["p4", "nope", "p1"]) == {"p4": "h4", "p1": "h1"}
        assert index.count(filled, ["p4", "nope", "p1"]) == 2
        assert index.count(filled, []) == 0 and index.existing_hashes(filled, []) == {}

    def test_rows_hashes_vectors_and_fields_come_back(self, index, filled):
        assert index.existing_hashes(filled) == {f"p{i}": f"h{i}" for i in range(6)}
        found, vectors = index.vectors_of(filled, ["p4", "nope", "p1"])
        assert sorted(found) == ["p1", "p4"] and vectors.shape == (2, DIM)
        expected = unit_vectors(6)
        for pid, vector in zip(found, vectors):
            assert np.allclose(vector, expected[int(pid[1:])], atol=1e-5)
        rows = index.rows_of(filled, ["p3", "nope"], ["colour", "no_such_field"])
        assert rows == {"p3": {"colour": 'say "hi"'}}

    def test_overwrite_and_delete(self, index, filled):
        index.write_rows(filled, ["p0"], unit_vectors(1, seed=9), ["h0-new"],
                         {"category": ["shirt"], "colour": ["green"]}, overwrite=True)
        index.delete_ids(filled, ["p5", "absent"])
        assert index.count(filled) == 5
        hashes = index.existing_hashes(filled)
        assert hashes["p0"] == "h0-new" and "p5" not in hashes
        assert index.rows_of(filled, ["p0"], ["colour"]) == {"p0": {"colour": "green"}}

    def test_exact_neighbours_come_first_best_first(self, index, filled):
        vectors = unit_vectors(6)
        hits = self.search(index, filled, vectors[[2, 4]], k=3)
        assert [row[0]["product_id"] for row in hits] == ["p2", "p4"]
        for row in hits:
            scores = [hit["score"] for hit in row]
            assert len(row) == 3 and scores == sorted(scores, reverse=True)
            assert abs(row[0]["score"] - 1.0) < 1e-3
            assert set(FIELDS) <= set(row[0])

    @pytest.mark.parametrize(("text", "expected"), [
        ("colour == red", {"p0", "p2", "p5"}),
        ("category == shirt and colour != red", {"p1"}),
        ('colour in [red, "navy blue"] and category != boots', {"p0", "p1", "p2"}),
        ("colour not in [red] or category == dress", {"p1", "p2", "p3", "p4"}),
        ("colour == 'say \"hi\"'", {"p3"}),
        ("colour == 'x\" or colour != \"'", set()),
    ])
    def test_filters_written_by_the_platform(self, index, filled, text, expected):
        expression = to_milvus(text, FIELDS)
        query = unit_vectors(1, seed=3)
        if not expected:
            assert index.search(filled, query, 10, expression, FIELDS) == [[]]
            return
        hits = self.search(index, filled, query, k=10, expression=expression)
        assert {hit["product_id"] for hit in hits[0]} == expected

    def test_a_filter_on_an_unknown_field_is_a_named_error(self, index, filled):
        with pytest.raises(InvalidFilterError):
            index.search(filled, unit_vectors(1), 3, 'price == "3"', FIELDS)

    def test_ids_with_quotes_reach_no_expression(self, index, filled):
        for crafted in ['p0" or product_id != "', "p0' or 1==1", 'p\\" or "']:
            assert index.rows_of(filled, [crafted], ["colour"]) == {}
            index.delete_ids(filled, [crafted])
        assert index.count(filled) == 6

    def test_aliases_move_and_protect_what_they_point_at(self, index, filled, name):
        alias = f"serving_{uuid.uuid4().hex[:8]}"
        assert index.resolve_alias(alias) == alias
        assert index.point_alias(alias, filled) is None
        assert index.resolve_alias(alias) == filled and index.aliases_of(filled) == [alias]
        hits = self.search(index, alias, unit_vectors(6)[[1]], k=1)
        assert hits[0][0]["product_id"] == "p1"
        with pytest.raises(VectorIndexError, match="refusing to drop"):
            index.drop_collection(filled)
        other = name + "_b"
        index.create_collection(other, DIM, FIELDS, "FLAT", "IP")
        try:
            assert index.point_alias(alias, other) == filled
            assert index.resolve_alias(alias) == other
        finally:
            index.drop_alias(alias)
            index.drop_collection(other)
        assert index.resolve_alias(alias) == alias

    def test_copy_rows_with_replaced_values(self, index, filled, name):
        target = name + "_copy"
        index.create_collection(target, DIM, FIELDS, "FLAT", "IP")
        try:
            copied = index.copy_rows(filled, target, {"p0", "p3"}, FIELDS,
                                     replace={"p3": {"colour": "white"}})
            assert copied == 2 and index.count(target) == 2
            assert index.existing_hashes(target) == {"p0": "h0", "p3": "h3"}
            assert index.rows_of(target, ["p0", "p3"], ["colour"]) == {
                "p0": {"colour": "red"}, "p3": {"colour": "white"}}
        finally:
            index.drop_collection(target)

    def test_prune_keeps_the_newest_and_every_aliased_collection(self, index):
        prefix = f"prune{uuid.uuid4().hex[:6]}"
        names = [f"{prefix}_m{v}_abc" for v in (1, 2, 3, 4)]
        alias = f"{prefix}_serving"
        for collection in names:
            index.create_collection(collection, DIM, FIELDS, "FLAT", "IP")
        index.point_alias(alias, names[0])
        try:
            dropped = index.prune(prefix, keep=2)
            assert sorted(dropped) == [names[1]]
            assert {n for n in index.list_collections() if n.startswith(prefix)} == {
                names[0], names[2], names[3]}
        finally:
            index.drop_alias(alias)
            for collection in names:
                if index.has_collection(collection):
                    index.drop_collection(collection)
