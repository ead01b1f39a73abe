"""``python -m tests.support.hooked_worker [--phase-delay S] [--kill-jobs-file F] -- ARGS``:
``celery ARGS`` (e.g. ``-A worker.celery_app worker ...``) with the test suite's hooks
applied first, so the worker and the pool processes it forks run with them. The shipped worker
has no hooks; deployments start it with ``celery`` itself."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tests.support.hooks import kill_poisoned_jobs, slow_progress


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="hooked_worker")
    parser.add_argument("--phase-delay", type=float, default=0.0, metavar="SECONDS")
    parser.add_argument("--kill-jobs-file", type=Path, default=None, metavar="FILE")
    parser.add_argument("celery_args", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    celery_args = args.celery_args[1:] if args.celery_args[:1] == ["--"] else args.celery_args
    if args.phase_delay:
        slow_progress(args.phase_delay)
    if args.kill_jobs_file is not None:
        kill_poisoned_jobs(args.kill_jobs_file)
    from celery.__main__ import main as celery_main

    sys.argv = ["celery", *celery_args]
    celery_main()


if __name__ == "__main__":
    main()
