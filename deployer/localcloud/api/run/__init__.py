"""Cloud Run Admin API v2 (run.googleapis.com)."""
