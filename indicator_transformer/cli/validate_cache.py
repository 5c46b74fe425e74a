"""``python validate_cache.py``: fully validate the feature cache and repair it.

Hashes every entry's files against the manifest, removes corrupt, partial and orphaned files and
leftover temporary files, rewrites the manifest, and prints a summary table followed by one line
per finding, naming its file. Exit 0 when the cache is (now) consistent; with ``--dry-run``, 1 when
it is not. ``--clear-all`` removes the whole cache (refused, exit 2, for a symbolic link or a
folder that holds anything the cache does not write).
"""

from __future__ import annotations

import argparse
import sys

from ..data.cache import FeatureCache
from ..errors import UserError
from .common import human_bytes, print_table, run_command


def parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    p = argparse.ArgumentParser(
        prog="validate_cache.py",
        description="Validate the feature cache: check every entry's sha256 against manifest.json, "
                    "remove corrupt, partial and orphaned files, and fix the manifest. Exit code 0 "
                    "when the cache is consistent afterwards.",
        epilog="While a run prepares features in the same cache, a repair and --clear-all are refused "
               "(exit 2, naming its PID): they would remove what it has written but not yet committed. "
               "--dry-run only checks and may run at any time.")
    p.add_argument("--cache-dir", default="cache", help="the cache folder (default: %(default)s)")
    p.add_argument("--clear-all", action="store_true",
                   help="remove the whole cache folder (features are recomputed on the next run)")
    p.add_argument("--dry-run", action="store_true",
                   help="report what is wrong without removing or rewriting anything")
    return p


def run(args: argparse.Namespace) -> int:
    """Validate (or clear) the cache named by ``args``."""
    cache = FeatureCache(args.cache_dir)
    if args.clear_all:
        files, nbytes = cache.clear_all()
        print(f"Cleared cache {args.cache_dir}: removed {files} file(s), {human_bytes(nbytes)}")
        return 0
    if not cache.root.exists():
        print(f"No cache at {args.cache_dir}: nothing to validate")
        return 0
    if not cache.root.is_dir():
        raise UserError(f"{args.cache_dir}: is not a folder (expected the feature cache directory)")
    report = cache.validate_full(fix=not args.dry_run)
    action = "would remove" if args.dry_run else "removed"
    rows = [
        ["valid", str(len(report.valid)), human_bytes(report.bytes["valid"]), "kept"],
        ["corrupt", str(len(report.corrupt)), human_bytes(report.bytes["corrupt"]),
         action if report.corrupt else "-"],
        ["missing", str(len(report.missing)), human_bytes(report.bytes["missing"]),
         action if report.missing else "-"],
        ["orphaned", str(len(report.orphaned)), human_bytes(report.bytes["orphaned"]),
         action if report.orphaned else "-"],
        ["temporary", str(len(report.temp_removed)), "-", action if report.temp_removed else "-"],
    ]
    print(f"Cache {args.cache_dir}:")
    print_table(["status", "entries/files", "bytes", "action"], rows)
    for line in report.problems:  # each finding names its file
        print(f"  {line}")
    if report.manifest_problem:
        print(f"manifest: {report.manifest_problem}; " + ("rewritten" if not args.dry_run else
                                                          "would be rewritten"))
    if report.in_use:
        print(f"note: {report.in_use}: files it has written but not yet committed count as orphaned "
              f"here; a repair is refused until it has finished")
    if args.dry_run and not report.consistent:
        print("Cache is not consistent (dry run: nothing changed)")
        return 1
    print("Cache is consistent")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    return run_command(parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
