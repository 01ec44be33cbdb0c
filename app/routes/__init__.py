"""HTTP route handlers: thin, they parse input and hand over to a stream or a response."""
