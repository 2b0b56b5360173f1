"""Milvus: versioned product collections, verification, alias swap, search, refresh."""
