"""Durable state in SQLite: the engine (one connection on one thread, group commit) and the
SQL (schema, statements, row decoding)."""
