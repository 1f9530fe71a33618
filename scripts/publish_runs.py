"""Mirror a study's small per-run files into the repository, so its tables can be rebuilt
from the repository alone.

    python scripts/publish_runs.py [--with-last] STUDY_DIR DEST

Every job directory under STUDY_DIR (one with a config.yaml, results.json or failed.txt)
gets the same relative directory under DEST holding its results.json, config.yaml,
metrics.jsonl and failed.txt. Checkpoints stay out, except with --with-last: a finished
job's last.pt too, for a study too long for one machine's life, so another machine can copy
DEST back into STUDY_DIR and its resumable sweep skips what is done. Jobs that failed or
have not finished are mirrored too, so the aggregated summary still names them; a file the
job no longer has (a failed.txt that a rerun removed) is removed from DEST as well.
"""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # _runs, also when loaded by path

from _runs import MARKER, find_jobs  # noqa: E402

PROG = "publish_runs.py"
FILES = ("results.json", "config.yaml", "metrics.jsonl", MARKER)


def publish(study: Path, dest: Path, with_last: bool = False) -> int:
    """Mirror every job of `study` into `dest`; the number of jobs."""
    finished, others = find_jobs(study)
    jobs = finished + [d for d, _ in others]
    for job in jobs:
        target = dest / job.relative_to(study)
        target.mkdir(parents=True, exist_ok=True)
        last = ("last.pt",) if with_last and job in finished else ()
        for name in FILES + last:
            if (job / name).is_file():
                shutil.copyfile(job / name, target / name)
            else:
                (target / name).unlink(missing_ok=True)
    return len(jobs)


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    with_last = "--with-last" in args
    args = [a for a in args if a != "--with-last"]
    if len(args) != 2:
        sys.exit(f"usage: {PROG} [--with-last] STUDY_DIR DEST")
    study, dest = map(Path, args)
    if not study.is_dir():
        sys.exit(f"{PROG}: error: STUDY_DIR {str(study)!r} does not exist (or is not a directory)")
    print(f"{PROG}: mirrored {publish(study, dest, with_last)} job(s) of {study} into {dest}",
          file=sys.stderr)


if __name__ == "__main__":
    main()
