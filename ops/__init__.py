"""Operator tools: provision a database, run the whole product locally (`make run`), and manage
keys, suspensions and deliveries from the command line (`parity ...`)."""
