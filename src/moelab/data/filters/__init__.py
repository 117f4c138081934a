"""Document filters: each drops a document with a named reason."""
