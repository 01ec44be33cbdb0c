"""Shared state: one `Backend` interface, in-process (`memory`) and shared across replicas (`redis`)."""
