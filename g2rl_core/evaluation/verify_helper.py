"""The verifier's helper processes: math-verify equivalence of one (answer, gold) pair per request.

``g2rl_core.evaluation.verifier`` starts this file as a script, ``python -P <this file> FD``,
with one end of a Unix socket pair as FD; it imports nothing from the package and needs no
``PYTHONPATH``. This process is a fork server (a "zygote"):

1. it imports math-verify and SymPy and runs one check of each answer form the benchmarks use
   (roots, intervals, equations, thousands separators, sets, matrices, text...), so that no
   import or lazily built parser can ever be interrupted half-way, then writes
   ``{"ready": true}`` (or ``{"fatal": "<why>"}`` and exits);
2. for every ``spawn`` command it forks a helper: a copy of this warmed-up process that serves
   one caller over its own socket, ``{"answer": str, "gold": str}`` -> ``{"ok": bool}``;
3. ``kill`` commands end helpers: the parent bounds a check by having its helper killed, and a
   killed helper is never reused, so a check cut short cannot leave state behind.

A fork takes milliseconds, so a helper lost to a time-out is replaced at once. Every message is
one JSON line; nothing is unpickled. Model output is untrusted text: it is parsed into SymPy
objects by math-verify, never evaluated as code.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import sys
from functools import lru_cache

# Answer forms of the benchmarks (gold, answer): each pulls in the parsers and SymPy modules it needs.
WARM_UP: tuple[tuple[str, str], ...] = (
    ("2\\sqrt2", "\\sqrt8"),
    ("[2,5)", "[2, 5)"),
    ("3", "x=3"),
    ("1000", "1,000"),
    ("\\frac12", "0.5"),
    ("90^\\circ", "90"),
    ("\\text{Evelyn}", "Evelyn"),
    ("\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", "\\begin{pmatrix}1\\\\2\\end{pmatrix}"),
    ("\\{1, 2\\}", "\\{2,1\\}"),
    ("(3, \\frac{\\pi}{2})", "\\left( 3, \\frac{\\pi}{2} \\right)"),
    ("3+2i", "2i+3"),
    ("e^{2x}", "\\exp(2x)"),
    ("(-\\infty, 1]", "(-\\infty,1]"),
    ("\\frac{\\sqrt{3}}{2}", "\\dfrac{\\sqrt3}{2}"),
    ("x^2+2x+1", "(x+1)^2"),
    ("\\log_2 8", "3"),
    ("\\sin(\\pi/6)", "\\frac12"),
)

# Address space of a helper; a hostile answer that asks for more gets MemoryError (a wrong answer).
MEMORY_LIMIT_BYTES = 4 << 30


@lru_cache(maxsize=1)
def _configs():
    from math_verify import ExprExtractionConfig, LatexExtractionConfig

    return (LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig())


@lru_cache(maxsize=65536)
def _parse(text: str):
    from math_verify import parse

    return parse(f"$\\boxed{{{text}}}$", extraction_config=_configs(), parsing_timeout=None)


def equivalent(answer: str, gold: str) -> bool:
    """math-verify: is ``answer`` (one extracted final answer) equal to ``gold``? Gold is parsed the
    same way and passed first. No time bound here: the parent process bounds the call."""
    from math_verify import verify

    gold_parsed, predicted = _parse(gold), _parse(answer)
    if not gold_parsed or not predicted:
        return False
    return bool(verify(gold_parsed, predicted, timeout_seconds=None))


def warm_up() -> None:
    """Import math-verify and SymPy and check every form in ``WARM_UP``; fails if one is judged wrong."""
    logging.getLogger("math_verify").setLevel(logging.ERROR)  # "Timeout is disabled": the parent bounds time
    wrong = [(gold, answer) for gold, answer in WARM_UP if not equivalent(answer, gold)]
    if wrong:
        raise RuntimeError(f"math-verify judged these equal forms different: {wrong}")
    _parse.cache_clear()


def _send(sock: socket.socket, message: dict) -> None:
    sock.sendall(json.dumps(message).encode() + b"\n")


def serve(sock: socket.socket) -> None:
    """A helper: for every request line ``{"answer", "gold"}`` on ``sock``, reply ``{"ok": bool}``; stop at EOF."""
    with sock, sock.makefile("rb") as lines:
        for line in lines:
            try:
                request = json.loads(line)
                ok = equivalent(str(request["answer"]), str(request["gold"]))
            except Exception:  # whatever the text does (RecursionError, MemoryError...), it is a wrong answer
                ok = False
            _send(sock, {"ok": ok})


def _limit_memory() -> None:
    try:
        import resource

        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        limit = MEMORY_LIMIT_BYTES if hard == resource.RLIM_INFINITY else min(MEMORY_LIMIT_BYTES, hard)
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    except (ImportError, ValueError, OSError):
        pass


def zygote(control: socket.socket) -> None:
    """The fork server: warm up once, then fork a ready helper for every ``spawn`` command.

    Commands on ``control`` (one JSON line each, answered before the next): ``{"spawn": token}``
    with the helper's socket attached (SCM_RIGHTS) -> ``{"spawned": token, "pid": pid}``;
    ``{"kill": token}`` -> SIGKILL and reap that helper, ``{"killed": token}``. At EOF (the parent
    is gone) every helper is killed. A helper is only ever reaped here after its kill command, so
    a token never names a reused pid.
    """
    children: dict[int, int] = {}  # token -> pid
    buffer, fds = b"", []
    while True:
        try:
            data, received, _, _ = socket.recv_fds(control, 4096, 1)
        except OSError:
            data, received = b"", []
        fds += received
        if not data:
            break
        buffer += data
        while b"\n" in buffer:
            line, _, buffer = buffer.partition(b"\n")
            command = json.loads(line)
            if "spawn" in command:
                helper_sock = socket.socket(fileno=fds.pop(0))
                pid = os.fork()
                if pid == 0:
                    try:
                        control.close()
                        serve(helper_sock)
                    finally:
                        os._exit(0)
                helper_sock.close()
                children[command["spawn"]] = pid
                _send(control, {"spawned": command["spawn"], "pid": pid})
            elif "kill" in command:
                pid = children.pop(command["kill"], None)
                if pid is not None:
                    try:
                        os.kill(pid, signal.SIGKILL)
                        os.waitpid(pid, 0)
                    except (ProcessLookupError, ChildProcessError):
                        pass
                _send(control, {"killed": command["kill"]})
    for pid in children.values():
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    control = socket.socket(fileno=int(sys.argv[1]))
    _limit_memory()
    try:
        warm_up()
    except BaseException as err:  # report any start-up failure to the parent, then stop
        _send(control, {"fatal": " ".join(f"{type(err).__name__}: {err}".split())[:2000]})
        return
    _send(control, {"ready": True})
    zygote(control)


if __name__ == "__main__":
    main()
