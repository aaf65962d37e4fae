"""One module per job kind; each defines `run(ctx: JobContext) -> dict` (the job's result)."""
