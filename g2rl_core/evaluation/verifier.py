"""Rule-based answer verification: +1 / -1 rewards for math and multiple-choice answers.

What counts as correct (the same rule in RL training and in evaluation; docs/verifier.md):
- math: the final answer is the content of the LAST ``\\boxed{...}`` (or ``\\fbox{...}``) of the
  response, and only that string is graded (math-verify, gold first). No box, an empty box or
  a check over its time bound is wrong. There is no fallback to unboxed text, so hedges such as
  "the answer is 17 or 18" earn nothing; a box holding several values is a set or tuple, which
  is wrong against a single gold value. A percent sign is a unit and is dropped on both sides:
  ``10\\%`` and ``10`` are the same answer (``0.1`` is not).
- multiple choice: the last boxed letter (``\\boxed{B}``, ``\\boxed{(B)}``, ``\\boxed{\\mathrm{B}}``,
  ``\\boxed{B) 10^-4 eV}``), else the last stated one ("the answer is (B)", "Answer: B"). A hedge
  between letters ("A or B", "A, B") is no answer.
``Verdict.extracted`` is exactly the string that was graded, so the verdict is a function of
(extracted, gold) alone, and maj@k may vote on it.

Model output is untrusted text. In this process it only goes through the linear-time scans
below (no regular expression here can backtrack more than a constant per character). The math
check runs in a helper process (``verify_helper.py``), which parses the answer into SymPy objects
with math-verify, never evaluating it as code; only JSON lines cross the sockets.

Time bound and independence. Each math check has a helper process to itself, from any thread
of any process (worker processes and daemonic ``multiprocessing`` workers included). Helpers are
forked from a fork server that imported and warmed up math-verify and SymPy once, before
anything was timed, so no import is ever cut short. A helper is reused while it answers within
its bound; a check that runs over kills its helper (a fresh fork replaces it in milliseconds),
so a slow or hostile answer can neither hold up nor poison another check.

The bound ``timeout_s`` is on the wall-clock time of the whole ``verify`` call, from entry to
return: extraction in the caller, waiting for a helper (forks and kills are a keeper thread's
work, never the caller's), sending the answer and waiting for the verdict. A verdict that has
not come by then scores -1, not verified. So the verdict of a check that needs close to its
bound can depend on machine load; an ordinary check needs milliseconds, about a thousandth of
the default bound (5 s), so in practice only answers built to be slow are affected (see
docs/verifier.md for why a CPU-time bound was dropped). Not counted: starting the fork server
(2-4 s, once per process; ``warm_up``). No signal or timer of the caller's process is touched.
"""

from __future__ import annotations

import atexit
import itertools
import json
import logging
import math
import os
import re
import select
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from g2rl_core.errors import G2RLError

ANSWER_KINDS: tuple[str, ...] = ("math", "choice")
DEFAULT_TIMEOUT_S = 5.0
CHOICE_LETTERS = "ABCDEFGHIJ"
MAX_HELPERS = 32  # helper processes per process at most; more concurrent callers wait for a free one
START_TIMEOUT_S = 300.0  # for the fork server's start-up (imports and warm-up), on a loaded machine

_log = logging.getLogger(__name__)


class VerifierUnavailable(G2RLError):
    """The helper process cannot start (math-verify missing or broken): no math answer can be checked."""


@dataclass(frozen=True)
class Verdict:
    """reward: +1.0 if the response's final answer matches the gold answer, else -1.0.
    extracted: the response's final answer string, the one that was graded (None if there is none)."""

    reward: float
    extracted: str | None

    @property
    def correct(self) -> bool:
        return self.reward > 0


# --- extraction (linear time) ------------------------------------------------------------------

_BOX_TOKEN = re.compile(r"\\(?:boxed|fbox)\s*+\{|[{}]")


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (or ``\\fbox{...}``) whose braces close, nested braces matched.

    One pass over the text with a stack of open braces: O(len(text)). "Last" is the box that
    opens last among those that close (an unclosed box is skipped for an earlier one).
    """
    stack: list[int] = []  # content start of a box, or -1 for a plain brace
    last_start, last_end = -1, -1
    for match in _BOX_TOKEN.finditer(text):
        token = match.group()
        if token == "{":
            stack.append(-1)
        elif token == "}":
            if stack and (start := stack.pop()) >= 0 and start > last_start:
                last_start, last_end = start, match.start()
        else:
            stack.append(match.end())
    return text[last_start:last_end].strip() if last_start >= 0 else None


_WRAPPER = r"\\(?:text|textbf|textrm|textsf|textit|texttt|mathrm|mathbf|mathsf|mathit|mathtt|mbox|operatorname)\s*+\{"
_WRAPPER_START = re.compile(_WRAPPER)
_UNWRAP_MAX_CHARS, _UNWRAP_MAX_DEPTH = 200, 4
_LETTER_ONLY = re.compile(r"\(?\s*+([A-J])\s*+\)?\.?")
_LETTER_THEN_TEXT = re.compile(r"\(?\s*+([A-J])(?:\s*+[).:]|\s)(.*)", re.S)
_WRAPPED_LETTER_THEN_TEXT = re.compile(_WRAPPER + r"\s*+\(?\s*+([A-J])\s*+\)?\s*+\}(.*)", re.S)
_HEDGE = re.compile(r"\s*+(?:\*\*)?\s*+(?:(?i:or|and)|[/,&])\s*+\(?\s*+[A-J](?![A-Za-z])")
_STATED_LETTER = re.compile(r"(?i:answer)(?:\s*+(?i:is))?\s*+[:\-]?\s*+(?:\*\*)?\s*+\(?\s*+([A-J])\s*+\)?(?![A-Za-z])")


def _unwrap(content: str) -> str:
    """Drop ``\\text{...}``, ``\\mathrm{...}`` and the like around the whole of a short content (4 deep)."""
    content = content.strip()
    for _ in range(_UNWRAP_MAX_DEPTH):
        match = _WRAPPER_START.match(content)
        if match is None or len(content) > _UNWRAP_MAX_CHARS or not content.endswith("}"):
            break
        inner, depth = content[match.end() : -1], 0
        for char in inner:  # the wrapper's own closing brace must be the last character
            depth += (char == "{") - (char == "}")
            if depth < 0:
                break
        if depth != 0:
            break
        content = inner.strip()
    return content


def _box_letter(content: str) -> str | None:
    """The letter a box holds: ``B``, ``(B)``, ``\\mathrm{B}``, ``B) option text``; None for a hedge."""
    content = _unwrap(content)
    if match := _LETTER_ONLY.fullmatch(content):
        return match.group(1)
    match = _LETTER_THEN_TEXT.match(content) or _WRAPPED_LETTER_THEN_TEXT.match(content)
    if match is None or _HEDGE.match(" " + match.group(2)):
        return None
    return match.group(1)


def extract_choice(text: str) -> str | None:
    """The final multiple-choice letter (A-J): the last boxed letter, else the last stated one.

    A hedge right after the letter ("A or B", "(A)/(B)", "A, B") gives None.
    """
    boxed = last_boxed(text)
    if boxed is not None and (letter := _box_letter(boxed)) is not None:
        return letter
    last = None
    for last in _STATED_LETTER.finditer(text):  # noqa: B007 (the last match is the one used)
        pass
    if last is None or _HEDGE.match(text, last.end()):
        return None
    return last.group(1)


_PERCENT = re.compile(r"\\*%")


def normalize_math_answer(answer: str) -> str:
    """What is graded of a boxed math answer: stripped, percent signs dropped (``10\\%`` -> ``10``)."""
    return _PERCENT.sub("", answer).strip()


# --- helper processes ------------------------------------------------------------------------------

_HELPER_SCRIPT = Path(__file__).with_name("verify_helper.py")
_COMMAND_TIMEOUT_S = 60.0  # for the fork server to fork or reap a helper


class _Channel:
    """A Unix socket carrying JSON lines; replies are read with a deadline."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._poll = select.poll()
        self._poll.register(sock.fileno(), select.POLLIN)
        self._buffer = b""

    def send(self, message: dict, fds: tuple[int, ...] = (), timeout_s: float | None = None) -> None:
        """Write one line; TimeoutError (an OSError) if the peer has not taken it within ``timeout_s``.

        A long answer fills the socket's buffer, and a helper starved of CPU reads it slowly, so
        the write is bounded too.
        """
        data = json.dumps(message).encode() + b"\n"
        self.sock.settimeout(None if timeout_s is None else max(timeout_s, 1e-3))
        try:
            if fds:
                sent = socket.send_fds(self.sock, [data], list(fds))
                data = data[sent:]
            if data:
                self.sock.sendall(data)
        finally:
            self.sock.settimeout(None)

    def receive(self, timeout_s: float) -> dict | None:
        """The next reply, or None if none came within ``timeout_s``. EOFError if the peer is gone."""
        deadline = time.monotonic() + timeout_s
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            if not self._poll.poll(math.ceil(left * 1000)):
                continue
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                raise EOFError("the verifier's helper process exited")
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        reply = json.loads(line)
        if not isinstance(reply, dict):
            raise ValueError("malformed reply from the verifier's helper process")
        return reply

    def peer_gone(self) -> bool:
        """True if the peer closed its end while idle (nothing else is ever pending)."""
        if not self._poll.poll(0):
            return False
        try:
            return self.sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except BlockingIOError:
            return False
        except OSError:
            return True

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


class _ForkServer:
    """``python -P verify_helper.py FD``: warms up once, then forks a ready helper per ``spawn``."""

    def __init__(self) -> None:
        ours, theirs = socket.socketpair()
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-P", str(_HELPER_SCRIPT), str(theirs.fileno())],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self.channel = _Channel(ours)
        self.lock = threading.Lock()
        self.tokens = itertools.count()
        self.broken = False
        try:
            reply = self.channel.receive(START_TIMEOUT_S)
        except (OSError, EOFError, ValueError) as err:
            self.close()
            raise RuntimeError(f"it exited during start-up ({err})") from None
        if reply is None or not reply.get("ready"):
            self.close()
            raise RuntimeError(reply.get("fatal", reply) if reply else f"no answer within {START_TIMEOUT_S:.0f} s")

    def usable(self) -> bool:
        return not self.broken and self.proc.poll() is None

    def _command(self, message: dict, expect: str, fds: tuple[int, ...] = ()) -> dict:
        with self.lock:
            try:
                self.channel.send(message, fds)
                reply = self.channel.receive(_COMMAND_TIMEOUT_S)
            except (OSError, EOFError, ValueError):
                reply = None
            if reply is None or expect not in reply:
                self.broken = True
                raise OSError("the verifier's fork server did not answer")
            return reply

    def spawn(self) -> _Helper:
        ours, theirs = socket.socketpair()
        token = next(self.tokens)
        try:
            reply = self._command({"spawn": token}, "spawned", (theirs.fileno(),))
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        return _Helper(_Channel(ours), token, self, int(reply.get("pid", -1)))

    def kill(self, token: int) -> None:
        self._command({"kill": token}, "killed")

    def close(self) -> None:
        """Close the control socket: the fork server kills its helpers and exits."""
        self.broken = True
        self.channel.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class _Helper:
    """One forked helper, serving one check at a time over its own socket."""

    def __init__(self, channel: _Channel, token: int, server: _ForkServer, pid: int) -> None:
        self.channel, self.token, self.server, self.pid = channel, token, server, pid

    def kill(self) -> None:
        if self.server.usable():
            try:
                self.server.kill(self.token)
            except OSError:
                pass
        self.channel.close()  # without a fork server, the helper exits when it next reads


class _Pool:
    """Helpers of this process: reused while they answer in time, never shared by two checks at
    once, killed when a check runs over or the helper crashes.

    Callers never talk to the fork server: a keeper thread forks the helpers they ask for and
    kills the retired ones, and a caller waits for an idle helper only until its deadline. So no
    caller can be held past its bound by the fork server, a slow fork, a kill or a full pool.
    """

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.idle: list[_Helper] = []
        self.every: set[_Helper] = set()
        self.size = 0  # helpers alive or asked of the keeper
        self.asked = 0  # forks asked of the keeper and not yet done
        self.waiting = 0  # callers waiting for a helper
        self.doomed: list[_Helper] = []  # retired helpers for the keeper to kill
        self.failure: str | None = None  # why the keeper could not fork (a restart failed)
        self.closed = False
        self.server: _ForkServer | None = None
        self.server_lock = threading.Lock()
        self.keeper: threading.Thread | None = None

    def _server(self) -> _ForkServer:
        with self.server_lock:
            if self.server is None or not self.server.usable():
                if self.server is not None:
                    self.server.close()
                self.server = None
                if self.closed:
                    raise VerifierUnavailable("the verifier's helpers were shut down")
                try:
                    self.server = _ForkServer()
                except Exception as err:
                    raise VerifierUnavailable(
                        f"the verifier's helper process ({sys.executable} -P {_HELPER_SCRIPT}) could not start: "
                        f"{' '.join(str(err).split())[:500]}; install math-verify[antlr4_9_3]==0.9.0 here"
                    ) from None
            return self.server

    def start(self) -> float:
        """Start the fork server if it is not running; the seconds this took (microseconds when it runs).

        The start-up (imports and warm-up, 2-4 s) is done in the caller's thread, so that a
        failure raises VerifierUnavailable there; callers leave it out of their bound. With a
        running fork server, a failure the keeper met before is forgotten: it may fork again.
        """
        began = time.monotonic()
        self._server()
        with self.cond:
            self.failure = None
        return time.monotonic() - began

    def _fork(self) -> _Helper:
        for attempt in range(2):
            try:
                return self._server().spawn()
            except OSError:  # the fork server died: start another once
                if attempt:
                    raise VerifierUnavailable("the verifier's fork server keeps failing to fork a helper") from None
        raise AssertionError("unreachable")

    def _wake_keeper(self) -> None:
        """Called with ``cond`` held: there is work for the keeper thread (started on first use)."""
        self.cond.notify_all()
        if self.keeper is None:
            self.keeper = threading.Thread(target=self._keep, name="g2rl-verifier-keeper", daemon=True)
            self.keeper.start()

    def _keep(self) -> None:
        """The keeper thread: kill retired helpers (first: a runaway one burns CPU), fork asked-for ones."""
        while True:
            with self.cond:
                while not (self.doomed or self.asked or self.closed):
                    self.cond.wait()
                if self.closed:
                    return
                doomed, self.doomed = self.doomed, []
                fork = self.asked > 0
            for helper in doomed:
                helper.kill()
            if not fork:
                continue
            try:
                helper = self._fork()
            except Exception as err:  # noqa: BLE001 (callers waiting for a helper get it instead)
                with self.cond:
                    self.failure = str(err) if isinstance(err, VerifierUnavailable) else f"{type(err).__name__}: {err}"
                    self.size -= self.asked
                    self.asked = 0
                    self.cond.notify_all()
                continue
            with self.cond:
                self.asked -= 1
                if self.closed:  # shut down meanwhile: the fork server kills it as it exits
                    helper.channel.close()
                    return
                self.every.add(helper)
                self.idle.append(helper)
                self.cond.notify_all()

    def acquire(self, deadline: float) -> _Helper | None:
        """A ready helper for this caller alone, or None if none is ready by ``deadline`` (monotonic).

        Asks the keeper for a fork when no helper is idle and fewer than ``MAX_HELPERS`` exist.
        Raises VerifierUnavailable if the keeper could not fork one (the fork server cannot restart).
        """
        with self.cond:
            self.waiting += 1
            try:
                while True:
                    if self.failure is not None:
                        raise VerifierUnavailable(self.failure)
                    if self.idle:
                        return self.idle.pop()
                    if self.asked < self.waiting and self.size < max(1, MAX_HELPERS):
                        self.size += 1
                        self.asked += 1
                        self._wake_keeper()
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return None
                    self.cond.wait(left)
            finally:
                self.waiting -= 1

    def release(self, helper: _Helper) -> None:
        with self.cond:
            if not self.closed:
                self.idle.append(helper)
                self.cond.notify_all()
                return
        self.discard(helper)

    def discard(self, helper: _Helper) -> None:
        """Retire a helper whose state is unknown (over time, crashed, garbled): its socket is closed
        at once and the keeper thread has the fork server kill it, so the caller does not wait."""
        helper.channel.close()
        with self.cond:
            self.every.discard(helper)
            self.size -= 1
            if not self.closed:
                self.doomed.append(helper)
                self._wake_keeper()

    def check(self, answer: str, gold: str, deadline: float) -> bool | None:
        """math-verify's verdict on (answer, gold); None if it did not come by ``deadline`` (monotonic)."""
        for _ in range(3):
            if time.monotonic() >= deadline:
                return None
            helper = self.acquire(deadline)
            if helper is None:
                return None
            reply, delivered = None, False
            try:
                if not helper.channel.peer_gone():  # a helper that died while idle is replaced, not blamed
                    delivered = True
                    helper.channel.send({"answer": answer, "gold": gold}, timeout_s=deadline - time.monotonic())
                    reply = helper.channel.receive(deadline - time.monotonic())
            except (OSError, EOFError, ValueError):  # it crashed on this answer, ran over, or answered garbage
                reply = None
            finally:
                if reply is not None and isinstance(reply.get("ok"), bool):
                    self.release(helper)
                else:
                    self.discard(helper)
            if delivered:
                return None if reply is None else bool(reply.get("ok"))
        return None

    def close(self) -> None:
        """Close every helper's socket, then the fork server's: it kills all its helpers and exits."""
        with self.cond:
            self.closed = True
            self.idle = []
            helpers = list(self.every)
            self.cond.notify_all()
        for helper in helpers:
            helper.channel.close()
        with self.server_lock:
            if self.server is not None:
                self.server.close()


_pool: _Pool | None = None
_pool_lock = threading.Lock()


def _the_pool() -> _Pool:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = _Pool()
        return _pool


def warm_up(helpers: int = 1) -> None:
    """Start the fork server and ``helpers`` helpers now (up to ``MAX_HELPERS``).

    Optional: the first math check does it otherwise (2-4 s, not counted in its bound). Call it
    before timing checks. Raises VerifierUnavailable if the helper process cannot start.
    """
    pool = _the_pool()
    pool.start()
    deadline = time.monotonic() + START_TIMEOUT_S
    taken = []
    try:
        for _ in range(max(1, min(helpers, MAX_HELPERS))):
            if (helper := pool.acquire(deadline)) is None:
                raise VerifierUnavailable(f"the verifier's fork server forked no helper within {START_TIMEOUT_S:.0f} s")
            taken.append(helper)
    finally:
        for helper in taken:
            pool.release(helper)


@atexit.register
def shutdown() -> None:
    """Stop this process's helpers and fork server (done at exit); a later check starts new ones."""
    global _pool
    with _pool_lock:
        pool, _pool = _pool, None
    if pool is not None:
        pool.close()


def _forget_pool_in_child() -> None:
    """After fork: the parent's helpers are not ours. Close our copies of their sockets, start afresh."""
    global _pool, _pool_lock
    pool, _pool, _pool_lock = _pool, None, threading.Lock()
    if pool is not None:
        for helper in list(pool.every):
            helper.channel.close()
        if pool.server is not None:
            pool.server.channel.close()


os.register_at_fork(after_in_child=_forget_pool_in_child)


# --- verdicts ------------------------------------------------------------------------------------


def _math_verdict(response: str, gold: str, deadline: float) -> Verdict:
    """Grade the last box with math-verify in a helper; -1 unless its verdict comes by ``deadline``."""
    boxed = last_boxed(response)
    if not boxed:
        return Verdict(-1.0, None)
    answer, expected = normalize_math_answer(boxed), normalize_math_answer(gold)
    if not answer or not expected:
        return Verdict(-1.0, boxed)
    pool = _the_pool()
    deadline += pool.start()  # the fork server's one-time start-up is not counted in the bound
    return Verdict(1.0 if pool.check(answer, expected, deadline) else -1.0, boxed)


def _choice_verdict(response: str, gold: str) -> Verdict:
    letter = extract_choice(response)
    return Verdict(1.0 if letter is not None and letter == gold.strip().upper() else -1.0, letter)


def verify(response: str, gold: str, kind: str = "math", *, timeout_s: float = DEFAULT_TIMEOUT_S) -> Verdict:
    """Check a model response against the gold answer. Safe to call from many threads at once.

    Args:
        response: the model's full output (untrusted text).
        gold: the reference answer: a LaTeX/plain math expression, or a letter A-J.
        kind: ``"math"`` (last box, math-verify, gold first) or ``"choice"`` (final letter).
        timeout_s: wall-clock bound on the whole call, from entry to return (default
            ``DEFAULT_TIMEOUT_S`` = 5 s). A math check whose verdict has not come when it runs
            out scores -1 (not verified), and its helper is killed. The bound is wall-clock time,
            so on an overloaded machine a check that needs close to its bound can run out; an
            ordinary check needs milliseconds, about a thousandth of the default. Not counted:
            the fork server's one-time start-up (see ``warm_up``).

    Returns:
        Verdict(reward=+1.0 or -1.0, extracted=the graded answer string or None). Whatever the
        response holds, the result is a Verdict: no exception comes from the text. Only bad
        arguments (ValueError, TypeError) and an environment in which no helper process can
        start (VerifierUnavailable) raise.
    """
    entered = time.monotonic()
    if kind not in ANSWER_KINDS:
        raise ValueError(f"kind must be one of {ANSWER_KINDS}, got {kind!r}")
    if not isinstance(response, str) or not isinstance(gold, str):
        raise TypeError("response and gold must be str")
    if not (isinstance(timeout_s, int | float) and math.isfinite(timeout_s) and timeout_s > 0):
        raise ValueError(f"timeout_s must be a finite number of seconds > 0, got {timeout_s!r}")
    try:
        if kind == "choice":
            return _choice_verdict(response, gold)
        return _math_verdict(response, gold, entered + timeout_s)
    except G2RLError:
        raise
    except Exception as err:  # a bug reached by some text: a wrong answer, never a crash of the caller
        _log.warning("verify: %s on a %d-character response; scored -1", type(err).__name__, len(response))
        return Verdict(-1.0, None)
