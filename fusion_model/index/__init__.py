"""The vector index: the backend-neutral seam (``base``), Milvus and an in-memory NumPy
backend, versioned product collections, verification, alias swap, search, refresh.

Importing the package registers the built-in backends (``milvus``, ``memory``)."""

from fusion_model.index import memory, milvus  # noqa: F401 - register the backends
