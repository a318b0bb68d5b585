"""Cloud Storage JSON API subset (storage.googleapis.com)."""
