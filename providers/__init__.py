"""Upstream providers: each translates one upstream API into `Delta`s, and nothing more."""
