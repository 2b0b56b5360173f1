"""Two-stage training: feature caching, data sampling, the explicit training loop."""
