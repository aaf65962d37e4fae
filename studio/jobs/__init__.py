"""Background jobs: a runner in the studio process starts worker processes; workers run tasks.

A job's state, progress, heartbeat and log tail live in the database, so the UI (and a
restarted studio) sees them without talking to the worker.
"""
