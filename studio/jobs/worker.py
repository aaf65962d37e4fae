"""Worker process: `python -m studio.jobs.worker JOB_ID --data-dir DIR --db URL`.

Loads the job's stored parameters into its typed spec (studio.jobs.specs; parameters it cannot
read fail the job with the key named), runs the task's `run(ctx, spec)` and records how it ended: succeeded (with its result), failed (message +
traceback), cancelled, or interrupted (SIGTERM without a cancel request). A worker killed
outright leaves the job 'running' with a stale heartbeat; the runner marks it interrupted.
"""
from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
import traceback

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")


class _Terminated(BaseException):
    """SIGTERM arrived (studio shutting down, or a cancel that the task did not notice)."""


def _on_sigterm(_signum, _frame):
    raise _Terminated()


def run_job(job_id: int, data_dir: str, db_url: str) -> int:
    """Run job `job_id` to its end state; returns the process exit code."""
    from pipelines.errors import UserError

    from ..db import Database
    from ..models import Job, JobState
    from ..settings import Settings
    from .context import JobCancelled, JobContext
    from .registry import task_module
    from .specs import spec_from_json
    from .state import transition

    settings = Settings(data_dir=data_dir, db_url=db_url)
    db = Database(db_url, migrate=False)
    with db.session() as s:
        job = s.get(Job, job_id)
        if job is None or not transition(s, job, JobState.running, "started", pid=os.getpid(),
                                          host=socket.gethostname(), progress=0.0):
            print(f"job {job_id} is not startable (state {getattr(job, 'state', None)})", file=sys.stderr)
            return 3
    ctx = JobContext(db, settings, job_id)
    ctx.start_heartbeat()
    end, message, fields = JobState.failed, "", {}
    try:
        spec = spec_from_json(ctx.kind, ctx.stored_params)  # refuses stored parameters it cannot read, naming the key
        result = task_module(ctx.kind).run(ctx, spec) or {}
        end, message, fields = JobState.succeeded, result.pop("message", "done"), {"result": result, "progress": 1.0}
    except JobCancelled:
        end, message = JobState.cancelled, "cancelled by the user"
    except _Terminated:
        end, message = (JobState.cancelled, "cancelled") if ctx.should_stop() else (JobState.interrupted,
                                                                                    "stopped (SIGTERM)")
    except UserError as e:  # bad input or a missing file: the message says what to do, no traceback
        end, message = JobState.failed, str(e)
        print(f"error: {e}", file=sys.stderr, flush=True)
    except BaseException as e:  # the worker records any crash; the runner moves on
        end, message, fields = JobState.failed, f"{type(e).__name__}: {e}", {"traceback": traceback.format_exc()}
        traceback.print_exc()
    finally:
        ctx.stop_heartbeat()
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # do not die while writing the end state
    with db.session() as s:
        job = s.get(Job, job_id)
        if end == JobState.succeeded and job.result:
            fields["result"] = {**job.result, **fields["result"]}
        transition(s, job, end, message, **fields)
    _final_tail(db, settings, job_id)
    return 0 if end == JobState.succeeded else 1


def _final_tail(db, settings, job_id: int) -> None:
    """Copy the last lines of the log into the job row once more (the ending lines)."""
    from ..models import Job
    from .state import log_path, read_tail
    sys.stdout.flush()
    sys.stderr.flush()
    with db.session() as s:
        s.get(Job, job_id).log_tail = read_tail(log_path(settings.data_dir, job_id))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m studio.jobs.worker", description=__doc__)
    p.add_argument("job_id", type=int)
    p.add_argument("--data-dir", required=True)
    p.add_argument("--db", required=True)
    args = p.parse_args(argv)
    signal.signal(signal.SIGTERM, _on_sigterm)
    return run_job(args.job_id, args.data_dir, args.db)


if __name__ == "__main__":
    sys.exit(main())
