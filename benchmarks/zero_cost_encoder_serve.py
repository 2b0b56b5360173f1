"""``fusion-model serve`` with a zero-cost query encoder, for ``serve_load.py --encoders``.

Every query becomes a random unit vector of the collection's 256 dimensions, with no
tokenizer and no model: what is left is the service's HTTP and Python work, the Milvus
search and the product metadata. The load test through this service measures the
ceiling that no cheaper query encoder could pass on the same machine. A benchmark tool
only; the platform never serves this.

    python benchmarks/zero_cost_encoder_serve.py serve [fusion-model serve options]
"""

from __future__ import annotations

import sys

import numpy as np

from fusion_model.cli import main
from fusion_model.serving import searcher

DIMENSIONS = 256  # serve_load.py's collections


def zero_cost_encoder(_model_name: str, _query_version: str, _concurrency: int = 1):
    """Stands in for ``searcher.load_query_encoder``: texts -> random unit vectors."""
    def encode(texts: list[str]) -> np.ndarray:
        vectors = np.random.default_rng().standard_normal((len(texts), DIMENSIONS))
        return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
    return encode


if __name__ == "__main__":
    searcher.load_query_encoder = zero_cost_encoder
    sys.exit(main(sys.argv[1:]))
