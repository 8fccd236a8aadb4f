"""Data sources and partitioners."""
