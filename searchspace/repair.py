"""Repair a damaged journal file: ``python -m searchspace.repair studies.db [--dry-run]``.

Keeps every complete record (also one appended onto a cut line), drops the rest, reports each
dropped line (number, bytes, why), backs the original up as ``studies.db.bak-<timestamp>`` and
replaces the file atomically (temp file + rename), after checking that Optuna loads the result.
Stop the workers of the study first. Exit status: 0 repaired or healthy, 2 for a bad file.
"""

from __future__ import annotations

import argparse
import sys

from searchspace.journal import repair_journal


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m searchspace.repair", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("journal", help="the journal file (--storage of search.py), e.g. studies.db")
    parser.add_argument("--dry-run", action="store_true", help="report what would be dropped; change nothing")
    args = parser.parse_args(argv)
    try:
        report = repair_journal(args.journal, dry_run=args.dry_run)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(report.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
