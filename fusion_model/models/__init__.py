"""Encoders, towers, the modality fusion network and its baselines."""
