"""The core every process imports: environment policy, settings, database access, key format,
logging and domain models. Nothing in here starts a process."""
