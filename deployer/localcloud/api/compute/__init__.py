"""Compute Engine API v1, global load balancing and Cloud Armor (compute.googleapis.com)."""
