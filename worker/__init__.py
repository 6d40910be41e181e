"""worker process (see README)."""
