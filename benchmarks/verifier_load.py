"""Benchmark: the verifier under load and hostile text (issue 16, items 5-8).

--calls verifications (default 2,000), a --hostile fraction of them (default 10%) hostile, run
twice: in --threads threads of one process (default 8), then in --processes worker processes
(default 4). Every case has a known expected verdict:

- ordinary cases from the benchmark files in --data-dir (../shared/data): the gold answer boxed
  (+1) or a wrong one (-1), math and multiple choice;
- hostile cases: the inputs of issue 16 (400 newlines or 200 spaces after "answer", 8,192
  unclosed boxes, slow SymPy work, several boxes, hedges, ``\\boxed{\\mathrm{B}}``, ``10\\%``) and
  more (towers of powers, 3,000 nested parentheses, a 2,000-column matrix, NUL bytes and lone
  surrogates, 1 MB of text, "answer is **(" repeated). Cases built to outlast their bound are
  given ``--slow-timeout`` (default 1 s) and expect -1; every other case has the default 5 s.

Printed per mode: throughput (calls / wall time, after the helpers are warm), the slowest call
and its case, calls whose wall time went over their bound + 1 s, wrong verdicts, and exceptions.
Targets: 0 wrong verdicts, 0 exceptions, no call above its bound + 1 s of wall time (the bound is
on the wall-clock time of the whole call, see verifier.py). The script exits 1 if a target is
missed in either mode.

    python benchmarks/verifier_load.py
    python benchmarks/verifier_load.py --calls 400 --threads 4 --processes 2
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import random
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # measure this checkout's verifier, not an installed copy of another

from g2rl_core.evaluation.verifier import DEFAULT_TIMEOUT_S, verify, warm_up  # noqa: E402

MATH_FILES = ["math500.jsonl", "aime24.jsonl", "aime25.jsonl", "amc23.jsonl", "math_train.jsonl"]
CHOICE_FILES = ["gpqa_diamond.jsonl", "mmlu_pro.jsonl"]


@dataclass(frozen=True)
class Case:
    name: str
    response: str
    gold: str
    kind: str
    expected: float
    timeout_s: float = DEFAULT_TIMEOUT_S


def _slow_sum(n: int) -> str:
    return "+".join(f"\\frac{{{i}}}{{{i + 1}}}x^{{{i}}}" for i in range(1, n))


def hostile_cases(slow_timeout: float) -> list[Case]:
    slow = _slow_sum(400)
    parentheses = "\\boxed{" + "(" * 3000 + "1" + ")" * 3000 + "}"
    fractions = "\\boxed{" + "\\frac{1}{" * 300 + "2" + "}" * 300 + "}"
    matrix = "\\boxed{\\begin{pmatrix}" + "1&" * 2000 + "1\\end{pmatrix}}"
    return [
        Case("answer + 400 newlines", "answer" + "\n" * 400, "A", "choice", -1.0),
        Case("answer + 200 spaces, then (B)", "answer" + " " * 200 + "(B)", "B", "choice", 1.0),
        Case("answer is **( x 20000", "answer is **(" * 20_000, "A", "choice", -1.0),
        Case("8192 unclosed boxes", "\\boxed{" * 8192, "1", "math", -1.0),
        Case("8192 unclosed boxes, then \\boxed{7}", "\\boxed{" * 8192 + "\\boxed{7}", "7", "math", 1.0),
        Case("8192 unclosed boxes, choice", "\\boxed{" * 8192 + "answer" + " " * 300, "A", "choice", -1.0),
        Case("slow SymPy sum (399 terms)", f"\\boxed{{{slow}}}", slow, "math", -1.0, slow_timeout),
        Case("tower of powers", "\\boxed{9^{9^{9^{9}}}}", "17", "math", -1.0, slow_timeout),
        Case("10^{10^{10}}", "\\boxed{10^{10^{10}}}", "1", "math", -1.0, slow_timeout),
        Case("3000 nested parentheses", parentheses, "1", "math", -1.0, slow_timeout),
        Case("300 nested fractions", fractions, "1", "math", -1.0, slow_timeout),
        Case("2000-column matrix", matrix, "1", "math", -1.0, slow_timeout),
        Case("several boxes, set gold", "\\boxed{6} and \\boxed{7}", "6, 7", "math", -1.0),
        Case("last box wins", "first \\boxed{7}, on reflection \\boxed{6}", "6", "math", 1.0),
        Case("unboxed hedge", "the answer is 17 or 18", "17", "math", -1.0),
        Case("boxed hedge", "\\boxed{17 \\text{ or } 18}", "17", "math", -1.0),
        Case("letter hedge", "the answer is A or B", "A", "choice", -1.0),
        Case("boxed letter hedge", "\\boxed{A or B}", "A", "choice", -1.0),
        Case("\\boxed{\\mathrm{B}}", "so \\boxed{\\mathrm{B}}", "B", "choice", 1.0),
        Case("10\\% vs 10", "\\boxed{10\\%}", "10", "math", 1.0),
        Case("10 vs 10\\%", "\\boxed{10}", "10\\%", "math", 1.0),
        Case("NUL bytes", "\x00\\boxed{\x00}\x00", "1", "math", -1.0),
        Case("lone surrogate", "\\boxed{\ud800}", "1", "math", -1.0),
        Case("1 MB of text, then the answer", "x" * 1_000_000 + " so \\boxed{\\frac{1}{2}}", "0.5", "math", 1.0),
        Case("unbalanced braces", "\\boxed{\\}}\\boxed{{}", "1", "math", -1.0),
    ]


def _rows(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def ordinary_cases(data_dir: Path, count: int, rng: random.Random) -> list[Case]:
    math_rows = [r for name in MATH_FILES for r in _rows(data_dir / name)]
    choice_rows = [r for name in CHOICE_FILES for r in _rows(data_dir / name)]
    cases = []
    for i in range(count):
        right = i % 2 == 0
        if i % 5 == 4:  # one in five multiple choice
            row = rng.choice(choice_rows)
            gold = row["answer"]
            letters = "ABCDEFGHIJ"[: len(row.get("choices") or row.get("options"))]
            if right:
                cases.append(Case("choice, right", f"Thinking... so \\boxed{{{gold}}}", gold, "choice", 1.0))
            else:
                other = rng.choice([x for x in letters if x != gold])
                cases.append(Case("choice, wrong", f"The answer is ({other}).", gold, "choice", -1.0))
        else:
            row = rng.choice(math_rows)
            gold = row["answer"]
            if right:
                cases.append(
                    Case("math, right", f"Reasoning... so the answer is $\\boxed{{{gold}}}$.", gold, "math", 1.0)
                )
            else:
                wrong = str(int(gold) + 1) if gold.lstrip("-").isdigit() else "99991"
                cases.append(Case("math, wrong", f"Reasoning... so \\boxed{{{wrong}}}", gold, "math", -1.0))
    return cases


def run_case(case: Case) -> tuple[str, float, float | None, str | None]:
    """(name, seconds, reward, exception) for one verification."""
    start = time.perf_counter()
    try:
        reward, error = verify(case.response, case.gold, case.kind, timeout_s=case.timeout_s).reward, None
    except BaseException as err:  # noqa: BLE001 (counted, not hidden)
        reward, error = None, f"{type(err).__name__}: {err}"
    return case.name, time.perf_counter() - start, reward, error


def _init_worker() -> None:
    warm_up(1)


def _ready(_: int) -> int:
    time.sleep(0.5)
    return 0


def report(mode: str, cases: list[Case], results: list, wall: float) -> bool:
    wrong = [(c.name, r[2]) for c, r in zip(cases, results) if r[3] is None and r[2] != c.expected]
    errors = [(c.name, r[3]) for c, r in zip(cases, results) if r[3] is not None]
    over = [(c.name, r[1], c.timeout_s) for c, r in zip(cases, results) if r[1] > c.timeout_s + 1.0]
    slowest = max(range(len(cases)), key=lambda i: results[i][1])
    at_bound = sum(r[1] >= c.timeout_s for c, r in zip(cases, results))
    print(f"{mode}: {len(cases)} calls in {wall:.1f} s = {len(cases) / wall:.1f} calls/s")
    print(
        f"  slowest call {results[slowest][1]:.2f} s ({cases[slowest].name!r}, bound {cases[slowest].timeout_s} s); "
        f"{at_bound} calls reached their bound"
    )
    worst = max(range(len(cases)), key=lambda i: results[i][1] - cases[i].timeout_s)
    print(
        f"  most over its bound: {results[worst][1] - cases[worst].timeout_s:+.3f} s "
        f"({cases[worst].name!r}, {results[worst][1]:.2f} s against {cases[worst].timeout_s} s)"
    )
    print(
        f"  calls above their bound + 1 s of wall time: {len(over)}; wrong verdicts: {len(wrong)}; "
        f"exceptions: {len(errors)}"
    )
    print(
        "  target: 0 wrong verdicts, 0 exceptions, no call above its bound + 1 s of wall time: "
        + ("met" if not (wrong or errors or over) else "MISSED")
    )
    for name, detail in (wrong + errors)[:10]:
        print(f"    {name}: {detail}")
    for name, seconds, bound in sorted(over, key=lambda o: o[2] - o[1])[:10]:
        print(f"    above bound + 1 s: {name}: {seconds:.2f} s (bound {bound} s)")
    return not (wrong or errors or over)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--hostile", type=float, default=0.10, help="fraction of hostile calls")
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--slow-timeout", type=float, default=1.0, help="bound of the cases built to outlast it")
    parser.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--modes", nargs="+", choices=["threads", "processes"], default=["threads", "processes"])
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    n_hostile = round(args.calls * args.hostile)
    pool_of_hostile = hostile_cases(args.slow_timeout)
    cases = [pool_of_hostile[i % len(pool_of_hostile)] for i in range(n_hostile)]
    cases += ordinary_cases(args.data_dir, args.calls - n_hostile, rng)
    rng.shuffle(cases)
    print(f"{len(cases)} calls, {n_hostile} hostile ({len(pool_of_hostile)} kinds), seed {args.seed}")
    ok = True
    if "threads" in args.modes:
        warm_up(args.threads)  # the fork server's start-up and the forks are not timed
        start = time.perf_counter()
        with ThreadPoolExecutor(args.threads) as pool:
            results = list(pool.map(run_case, cases))
        ok &= report(f"{args.threads} threads", cases, results, time.perf_counter() - start)
    if "processes" in args.modes:
        with mp.get_context("spawn").Pool(args.processes, initializer=_init_worker) as pool:
            pool.map(_ready, range(args.processes), chunksize=1)
            start = time.perf_counter()
            results = pool.map(run_case, cases, chunksize=4)
            ok &= report(f"{args.processes} processes", cases, results, time.perf_counter() - start)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
