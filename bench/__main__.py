"""`make bench`: every benchmark, one after another. Each prints ratios measured side by side.

`python -m bench [NAME ...] [--quick]`: NAME is a module of this package (gateway, worker, console,
migrations, parity, audit).
"""

from __future__ import annotations

import subprocess
import sys

# Each is `python -m bench.<name>`; the other modules here are servers and helpers they use.
BENCHMARKS = ["gateway", "worker", "console", "migrations", "parity", "audit"]


def main(argv: list[str]) -> int:
    flags = [a for a in argv if a.startswith("-")]
    names = [a for a in argv if not a.startswith("-")] or BENCHMARKS
    unknown = sorted(set(names) - set(BENCHMARKS))
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}; have: {', '.join(BENCHMARKS)}")
        return 2
    failed = []
    for name in names:
        print(f"\n=== bench.{name} ===", flush=True)
        if subprocess.run([sys.executable, "-m", f"bench.{name}", *flags], check=False).returncode:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
