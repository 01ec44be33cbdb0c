"""tokenrelay: the HTTP surface, streams and state."""
