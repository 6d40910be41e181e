"""gateway process (see README)."""
