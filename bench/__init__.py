"""Benchmark harness and the fake upstream it shares with the tests."""
