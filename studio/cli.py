"""SIMS Studio: `sims-studio` (or `python app.py`) opens the bundled digits demo in the browser (offline, CPU ok).

Parses arguments, opens the data directory and database (migrations run on start), starts
the job runner and launches the Gradio app. Everything else lives in studio/.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import threading

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="sims-studio", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default="data", help="folder for the database, samples, runs, exports (default ./data)")
    p.add_argument("--db", default="", help="SQLAlchemy URL (default: sqlite:///DATA_DIR/studio.db, WAL); "
                                           "e.g. postgresql+psycopg://user:pw@host/sims for a shared studio")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=None, help="port (default: first free from 7860)")
    p.add_argument("--share", action="store_true", help="create a public gradio.live link (needs internet)")
    p.add_argument("--auth", default=None, metavar="USER:PASS", help="require this login")
    p.add_argument("--device", default=None, help="default device for jobs: cpu, cuda, cuda:1 (default: auto)")
    p.add_argument("--jobs-per-device", type=int, default=1, help="GPU-bound jobs running at once per device")
    p.add_argument("--max-upload-mb", type=int, default=512, help="largest accepted upload")
    p.add_argument("--allow-private-urls", action="store_true",
                   help="let model import by URL reach loopback, private and link-local addresses (refused by "
                        "default, so that a studio serving a team cannot be used to probe its network)")
    p.add_argument("--max-sessions", type=int, default=256,
                   help="browser sessions whose state is kept (about 0.9 MB each; the least recently used goes first)")
    p.add_argument("--session-idle-minutes", type=float, default=60.0,
                   help="drop a browser session unused this long; its page reloads on the next click")
    p.add_argument("--no-demo", action="store_true", help="do not register the bundled digits demo")
    return p.parse_args(argv)


def stop_on_sigterm(grace_s: float = 10.0) -> None:
    """Make SIGTERM stop the studio, whatever the process that started it did with the signal.

    A signal ignored by a parent stays ignored in its children (some shells and job launchers ignore
    SIGTERM for background jobs), and a studio started from one outlived `kill` until SIGKILL. The handler
    turns SIGTERM into KeyboardInterrupt in the main thread, so Gradio closes its server and the studio
    closes its database; a shutdown still running after `grace_s` is cut short. Running jobs are left to
    their workers (a studio started again adopts them)."""
    def on_term(signum, frame):
        timer = threading.Timer(grace_s, os._exit, args=(128 + signum,))
        timer.daemon = True
        timer.start()
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)


def main(argv=None) -> int:
    args = parse_args(argv)
    stop_on_sigterm()
    from pipelines.errors import UserError
    try:
        from studio.core import open_studio
        from studio.settings import Settings, default_device
        from studio.ui.app import build_ui, launch_kwargs
    except ModuleNotFoundError as e:  # an engine-only install: say which extra brings the studio
        from pipelines.extras import missing_extra_message
        if missing_extra_message(e) is None:
            raise
        print(f"error: the studio {missing_extra_message(e)[5:]}", file=sys.stderr)
        return 2

    auth = None
    if args.auth:
        if ":" not in args.auth:
            print("error: --auth must look like user:password", file=sys.stderr)
            return 2
        auth = tuple(args.auth.split(":", 1))
    if args.max_sessions < 1 or args.session_idle_minutes <= 0:
        print("error: --max-sessions must be at least 1 and --session-idle-minutes above 0", file=sys.stderr)
        return 2
    try:
        settings = Settings(data_dir=args.data_dir, db_url=args.db, device=args.device or default_device(),
                            jobs_per_device=args.jobs_per_device, max_upload_mb=args.max_upload_mb,
                            allow_private_urls=args.allow_private_urls)
        studio = open_studio(settings, demo=not args.no_demo)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"SIMS Studio: data in {settings.data_dir}, database {settings.db_url}")
    for note in studio.notes:
        print(f"note: {note}")
    demo = build_ui(studio, session_idle_s=60 * args.session_idle_minutes)
    demo.queue(default_concurrency_limit=4)
    try:
        demo.launch(server_name=args.host, server_port=args.port, share=args.share, auth=auth,
                    **launch_kwargs(studio, args.max_sessions, 60 * args.session_idle_minutes))
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM while the server was still starting
        demo.close()
    finally:
        studio.close()
    return 0
