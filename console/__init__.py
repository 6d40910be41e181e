"""console process (see README)."""
