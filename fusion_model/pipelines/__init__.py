"""One function per pipeline (DAG) task: URIs and ids in, a small JSON-able dict out."""
