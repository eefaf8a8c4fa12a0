"""`python -m tests`: the whole check, as CI runs it — ruff, mypy, then every test.

pytest's exit code 5 (no tests collected) counts as a failure here: a suite that ran nothing has proved nothing.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(*command: str) -> int:
    print("+", " ".join(command), flush=True)
    return subprocess.call(command, cwd=ROOT)


def main() -> int:
    python = sys.executable
    for check in ((python, "-m", "ruff", "check", "."), (python, "-m", "mypy")):
        if rc := run(*check):
            return rc
    rc = run(python, "-m", "pytest", *sys.argv[1:])
    if rc == 5:
        print("pytest collected no tests: failing", file=sys.stderr)
        return 1
    return rc


if __name__ == "__main__":
    sys.exit(main())
