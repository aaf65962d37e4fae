"""One module per job kind; each defines `run(ctx: JobContext, spec) -> dict` (the job's result),
where spec is the kind's dataclass from studio.jobs.specs."""
