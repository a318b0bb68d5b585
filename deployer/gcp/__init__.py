"""Thin adapters over the Google client libraries. Heavy imports happen only inside functions."""
