"""Shared by the benchmark scripts: print a table and, with --results, append it to RESULTS.md
under a dated heading that names the machine and the exact command."""

from __future__ import annotations

import datetime
import os
import shlex
import sys
from typing import Optional, Sequence


def report(title: str, machine: str, text: str, results: Optional[str], argv: Optional[Sequence[str]]) -> None:
    print(text)
    if not results:
        return
    script = os.path.relpath(sys.argv[0]) if sys.argv and sys.argv[0].endswith(".py") else "benchmarks/?"
    cmd = " ".join(["python", script, *(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))])
    with open(results, "a") as f:
        f.write(f"\n### {title} ({datetime.date.today()}, {machine}, `{cmd}`)\n\n{text}\n")
    print(f"appended to {results}")
