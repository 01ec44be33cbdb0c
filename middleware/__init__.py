"""Cross-cutting policy applied to every request, streams included."""
