"""Catalog format, loaders, generators and importers."""
