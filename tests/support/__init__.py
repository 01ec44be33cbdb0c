"""Test helpers: a WHATWG-exact SSE parser, servers on loopback, log capture."""
