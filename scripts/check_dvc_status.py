"""Fail when the committed results do not come from the committed code.

Runs `dvc status --json` and fails if a stage's code, parameter or notebook dependency (a
git-tracked file, or a params.yaml key) differs from dvc.lock, or if a git-tracked output
(the committed tables, figures and notebooks under results/) does. Pipeline outputs that are
simply absent from this checkout or its DVC cache (runs/, build/, artifacts/) are fine: a clean
clone has none of them.

    python scripts/check_dvc_status.py
"""

from __future__ import annotations

import json
import subprocess
import sys


def tracked_files() -> set[str]:
    return set(subprocess.run(["git", "ls-files"], check=True, capture_output=True, text=True).stdout.split())


def stale_entries(status: dict, tracked: set[str]) -> list[str]:
    """'stage: path (state)' for every stale tracked dependency, parameter or output."""
    problems = []
    for stage, changes in status.items():
        for change in changes if isinstance(changes, list) else []:
            if not isinstance(change, dict):
                continue
            for kind in ("changed deps", "changed outs"):
                for path, state in change.get(kind, {}).items():
                    if isinstance(state, dict):  # params.yaml: {key: state}
                        problems += [f"{stage}: {path} {key} ({s})" for key, s in state.items()]
                    elif path in tracked or any(t.startswith(path.rstrip("/") + "/") for t in tracked):
                        problems.append(f"{stage}: {path} ({state})")
    return problems


def main() -> int:
    result = subprocess.run(["dvc", "status", "--json"], capture_output=True, text=True)
    if result.returncode != 0:
        print(f"dvc status failed: {result.stderr.strip()}", file=sys.stderr)
        return 2
    problems = stale_entries(json.loads(result.stdout or "{}"), tracked_files())
    if problems:
        print(
            "dvc.lock does not match the committed code, params or results; rerun `dvc repro` and commit "
            "dvc.lock with results/:",
            file=sys.stderr,
        )
        for line in problems[:40]:
            print(f"  {line}", file=sys.stderr)
        return 1
    print("dvc status: code, params and committed results match dvc.lock")
    return 0


if __name__ == "__main__":
    sys.exit(main())
