"""Answer verifiers: the one binary reward used for eval, RFT filtering and MC rollouts.

Three kinds of task, one entry point:

    is_correct(completion, reference, kind)  -> bool
    extract_answer(completion, kind)         -> str | None

kind = "procedural"  embedded arithmetic testbed, last line is `#<int>`; pure string path.
kind = "gsm8k"       strict `#### <number>`, exact rational comparison.
kind = "math"        last `\\boxed{...}`; exact fast path for plain numbers, everything else
                     goes to math-verify inside a worker process with a hard deadline.
kind = "star_graph"  the path-star task (data/star_graph.py): one node (a letter) per line, the
                     whole path equal to the reference; pure string path.

Model output is untrusted. Nothing here evals, execs, sympifies or parse_expr's a string: the
only parser that sees model text is math-verify's LaTeX parser (ANTLR -> sympy constructors),
and it only sees a short, capped, pre-screened answer, in a separate process that we can kill.
Every failure mode (bad type, bad UTF-8, too long, no answer, timeout, crash) returns False;
only a programming error (unknown kind) raises.

This file is also the worker's program: _worker_main() runs in the child process.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import json
import os
import re
import selectors
import subprocess
import sys
import threading
import time
from fractions import Fraction

KINDS = ("procedural", "gsm8k", "math", "star_graph")

# -----------------------------------------------------------------------------
# settings: module-level so a caller or a test can change them. Read at call time, except
# MAX_WORKERS and the caps compiled into regexes (MAX_ANSWER_CHARS, *_DIGITS): read at import.

TIMEOUT_S = 5.0  # default per-comparison deadline for the math-verify worker
WORKER_START_TIMEOUT_S = 60.0  # a cold worker imports sympy; not charged to the call's deadline
MAX_WORKERS = max(1, min(4, os.cpu_count() or 1))  # concurrent worker processes
WORKER_MEMORY_BYTES = 2 * 1024**3  # address-space cap in the worker: a memory bomb -> MemoryError
MAX_COMPLETION_CHARS = 20_000  # longer completions are rejected outright (counted as "rejected")
MAX_ANSWER_CHARS = 300  # extracted answer (box content, number) length cap
MAX_BRACE_DEPTH = 12  # real answers nest ~4 deep (\frac{\sqrt{\frac{..}{..}}}{..})
MAX_EXPONENT_DIGITS = 4  # 2^{9999} is fine for sympy; 2^{99999999} is not
MAX_FACTORIAL_DIGITS = 4  # 9999! has 35k digits (ms); 99999999! never finishes
MEMO_SIZE = 1 << 16

# -----------------------------------------------------------------------------
# steps: THE one rule for the whole project


def split_steps(solution: str) -> list[str]:
    """Steps are the non-empty lines of a solution, whitespace-stripped.

    The final answer line (`#5`, `#### 5`, `... \\boxed{5}`) is itself the last step.
    """
    return [line.strip() for line in solution.split("\n") if line.strip()]


def join_steps(steps: list[str]) -> str:
    """Inverse of split_steps for already-split (stripped, non-empty) steps."""
    return "\n".join(steps)


# -----------------------------------------------------------------------------
# counters: timeouts and format failures must be visible, not silent zeros

_STATS_LOCK = threading.Lock()
_STATS = {
    "format_fail": 0,  # no (unique) answer found in the completion
    "rejected": 0,  # bad type / bad UTF-8 / over a cap / explosive expression
    "fast_path": 0,  # math answers decided by exact Fraction comparison
    "worker_calls": 0,  # math answers sent to math-verify (memo misses)
    "timeouts": 0,  # worker calls that hit the deadline (worker killed, answer False)
    "worker_errors": 0,  # worker failed to start, crashed, or raised
    "worker_starts": 0,  # worker processes spawned
    "bad_reference": 0,  # the reference itself has no readable answer: a data bug
}


def _count(key: str) -> None:
    with _STATS_LOCK:
        _STATS[key] += 1


def stats() -> dict[str, int]:
    """Snapshot of the counters, plus memo hits/misses of the math-verify path."""
    with _STATS_LOCK:
        out = dict(_STATS)
    info = _math_equal_slow.cache_info()
    out["memo_hits"], out["memo_misses"] = info.hits, info.misses
    return out


def reset_stats() -> None:
    """Zero the counters and empty the memo (memo hits are part of the stats)."""
    with _STATS_LOCK:
        for key in _STATS:
            _STATS[key] = 0
    _math_equal_slow.cache_clear()


# -----------------------------------------------------------------------------
# input hygiene


def _usable_text(text: object) -> bool:
    """A str of bounded length that is valid Unicode (e.g. no lone surrogates from
    bytes.decode(errors="surrogateescape")). Everything else scores 0, never raises."""
    if not isinstance(text, str) or len(text) > MAX_COMPLETION_CHARS:
        return False
    if text.isascii():  # the common case, and O(n) in C
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# -----------------------------------------------------------------------------
# kind "procedural": hot path (eval + hundreds of thousands of rollouts).
# Pure str methods and one anchored regex on one short line: linear time on input that is
# already capped at MAX_COMPLETION_CHARS, so there is nothing that could hang and no need
# for a process or a timeout: one pipe round trip to a worker costs tens of microseconds,
# the whole check ~1.5 us (benchmarks/bench_verify.py).

# [0-9] not \d: \d also matches e.g. Arabic-Indic digits, which int() would happily accept.
_PROC_ANSWER = re.compile(rf"#(-?[0-9]{{1,{MAX_ANSWER_CHARS}}})")
_PROC_REFERENCE = re.compile(rf"#?(-?[0-9]{{1,{MAX_ANSWER_CHARS}}})")


def _extract_procedural(text: str) -> str | None:
    # exactly one '#' in the whole solution: two answer lines (even equal ones) is a format fail
    if text.count("#") != 1:
        return None
    text = text.rstrip()
    last_line = text[text.rfind("\n") + 1 :].strip()
    m = _PROC_ANSWER.fullmatch(last_line)
    return m.group(1) if m else None


def _procedural_reference(reference: str) -> int | None:
    m = _PROC_REFERENCE.fullmatch(reference.strip())  # "5" or "#5"
    return int(m.group(1)) if m else None


# -----------------------------------------------------------------------------
# kind "star_graph": the answer is the whole path, one node per line (a lowercase letter each);
# the reference is the path comma-separated ("k,d,q,z") or one node per line. Pure str methods.


def _star_path(text: str, sep: str) -> list[str] | None:
    nodes = [n.strip() for n in text.split(sep) if n.strip()]
    ok = bool(nodes) and all(len(n) == 1 and "a" <= n <= "z" for n in nodes)
    return nodes if ok else None


def _extract_star_graph(text: str) -> str | None:
    nodes = _star_path(text, "\n")
    return ",".join(nodes) if nodes else None


def _star_graph_reference(reference: str) -> str | None:
    nodes = _star_path(reference, "," if "," in reference else "\n")
    return ",".join(nodes) if nodes else None


# -----------------------------------------------------------------------------
# kind "gsm8k": strict `#### <number>` (the GSM8K convention), never "the last number".

# A number is an integer, optionally with well-formed thousands commas, optionally a decimal
# part. The lookahead stops "#### 12abc" / "#### 12,34" from reading as 12. An optional "$"
# is tolerated. The group is optional so that a `####` with no number is seen (and fails).
_GSM_NUMBER = r"-?(?:[0-9]{1,3}(?:,[0-9]{3})+|[0-9]+)(?:\.[0-9]+)?(?![0-9A-Za-z_,]|\.[0-9])"
_GSM_MARK = re.compile(r"####[ \t]*\$?(" + _GSM_NUMBER + ")?")
_GSM_BARE = re.compile(r"\$?(" + _GSM_NUMBER + r")\.?")


def _extract_gsm8k(text: str) -> str | None:
    numbers = [m.group(1) for m in _GSM_MARK.finditer(text)]
    # no marker, a marker without a number, or two different answers -> no answer
    if not numbers or any(n is None or len(n) > MAX_ANSWER_CHARS for n in numbers):
        return None
    values = {Fraction(n.replace(",", "")) for n in numbers}
    if len(values) != 1:
        return None
    return numbers[-1].replace(",", "")


def _gsm8k_reference(reference: str) -> Fraction | None:
    if "####" in reference:  # raw GSM8K answer text: reasoning ... #### 72
        answer = _extract_gsm8k(reference)
        return None if answer is None else Fraction(answer)
    m = _GSM_BARE.fullmatch(reference.strip())
    if m is None or len(m.group(1)) > MAX_ANSWER_CHARS:
        return None
    return Fraction(m.group(1).replace(",", ""))


# -----------------------------------------------------------------------------
# kind "math": last \boxed{...}, brace-matched by hand


def _last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...} (or \\fbox{...}). Escaped braces (\\{ \\}) are literal
    set braces and do not count. Gives up (None) past MAX_ANSWER_CHARS or MAX_BRACE_DEPTH,
    so the scan is bounded no matter how long or deeply nested the input is."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    i = start + (6 if text.startswith("\\boxed", start) else 5)
    while i < len(text) and text[i] in " \t":
        i += 1
    if i >= len(text) or text[i] != "{":
        return None
    begin, depth = i + 1, 0
    end = min(len(text), begin + MAX_ANSWER_CHARS + 1)
    while i < end:
        c = text[i]
        if c == "\\":
            i += 2  # skip the escaped char: \{ \} \\ are not grouping braces
            continue
        if c == "{":
            depth += 1
            if depth > MAX_BRACE_DEPTH:
                return None
        elif c == "}":
            depth -= 1
            if depth == 0:
                answer = text[begin:i].strip()
                return answer or None
        i += 1
    return None  # unterminated, or longer than MAX_ANSWER_CHARS


def _extract_math(text: str) -> str | None:
    return _last_boxed(text)


def _math_reference(reference: str) -> str | None:
    if "\\boxed" in reference or "\\fbox" in reference:  # a MATH solution or a \boxed{} string
        return _last_boxed(reference)
    ref = reference.strip()
    return ref if 0 < len(ref) <= MAX_ANSWER_CHARS else None


# LaTeX spacing commands \! \, \; \: and "\ " -- but "\\" (a row break) is matched first and
# kept, so that "1 \\ 2" does not lose its row break to the "\ " rule.
_LATEX_SPACE = re.compile(r"\\\\|\\[!,;: ]")


def _normalise(answer: str) -> str:
    """Light, meaning-preserving cleanup shared by the fast path and the worker."""
    s = answer.strip().strip("$").strip()
    s = _LATEX_SPACE.sub(lambda m: m.group(0) if m.group(0) == "\\\\" else "", s)
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    # percent: MATH writes "10\%"; Hendrycks' grader drops it and math-verify 0.9.0 can't parse
    # it inside a box, so both sides are compared without it
    s = s.replace("\\%", "").replace("%", "")
    return s.strip().rstrip(".").strip()


# Plain numbers and numeric fractions: decided exactly here, no sympy, no process.
_FAST_NUMBER = re.compile(r"-?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)")
_FAST_SLASH = re.compile(r"(-?[0-9]+)/([0-9]+)")
_FAST_FRAC = re.compile(r"(-?)\\frac(?:\{(-?[0-9]+)\}\{(-?[0-9]+)\}|([0-9])([0-9]))")


def _as_fraction(s: str) -> Fraction | None:
    try:
        if _FAST_NUMBER.fullmatch(s):
            return Fraction(s)
        if m := _FAST_SLASH.fullmatch(s):
            return Fraction(int(m.group(1)), int(m.group(2)))
        if m := _FAST_FRAC.fullmatch(s):
            num, den = (m.group(2), m.group(3)) if m.group(2) is not None else m.group(4, 5)
            value = Fraction(int(num), int(den))
            return -value if m.group(1) else value
    except (ValueError, ZeroDivisionError):
        pass  # e.g. \frac{1}{0}: not a plain number, let the slow path say no
    return None


_COMMAND = re.compile(r"\\[A-Za-z]+")
_VARIABLE = re.compile(r"[A-Za-z]")
_TOWER_START = re.compile(r"\^\s*(\{|\\?[A-Za-z]+|[0-9]+|.)")
_BIG_EXPONENT = re.compile(rf"\^\s*\{{?\s*-?[0-9]{{{MAX_EXPONENT_DIGITS + 1},}}")
_BIG_FACTORIAL = re.compile(rf"[0-9]{{{MAX_FACTORIAL_DIGITS + 1},}}\s*!")
_NESTED_FACTORIAL = re.compile(r"!\s*(?:\\right\s*)?[)}\]]\s*!")  # (9!)!, {9!}!


def _explosive(s: str) -> bool:
    """Cheap screen for inputs that would make sympy compute (or allocate) forever: numeric
    power towers (9^{9^{9^9}}, 9^9^9), huge literal exponents and factorials, (n!)!, and
    Python's `**`, which is not LaTeX. The worker deadline is the backstop for the rest."""
    if "**" in s or _BIG_EXPONENT.search(s) or _BIG_FACTORIAL.search(s):
        return True
    if _NESTED_FACTORIAL.search(s):
        return True
    for m in _TOWER_START.finditer(s):
        if m.group(1) == "{":  # braced exponent: does it contain another power?
            depth, i = 0, m.start(1)
            while i < len(s):
                depth += {"{": 1, "}": -1}.get(s[i], 0)
                if depth == 0:
                    break
                i += 1
            exponent, after = s[m.start(1) : i + 1], s[i + 1 :]
        else:
            exponent, after = m.group(1), s[m.end(1) :]
        if after.lstrip().startswith("^"):  # 9^9^9
            return True
        # A power inside an exponent only explodes when it is all numbers: 9^{9^{9^9}} is
        # rejected, e^{-x^2} is fine (sympy keeps it symbolic). \pi, \cdot are not variables.
        if "^" in exponent and not _VARIABLE.search(_COMMAND.sub("", exponent)):
            return True
    return False


def _brace_depth(s: str) -> int:
    depth = deepest = 0
    for c in s:
        if c == "{":
            depth += 1
            deepest = max(deepest, depth)
        elif c == "}":
            depth -= 1
    return deepest


def _math_equal(pred: str, gold: str, timeout_s: float) -> bool:
    p, g = _normalise(pred), _normalise(gold)
    if not p or not g:
        return False
    fp, fg = _as_fraction(p), _as_fraction(g)
    if fp is not None and fg is not None:
        _count("fast_path")
        return fp == fg
    if any(_explosive(s) or _brace_depth(s) > MAX_BRACE_DEPTH for s in (p, g)):
        _count("rejected")
        return False
    try:
        return _math_equal_slow(p, g, timeout_s)
    except _WorkerUnavailable:
        return False


class _WorkerUnavailable(Exception):
    """No worker could be started: says nothing about the answer, so it must not be memoised
    (lru_cache does not cache a call that raises)."""


# Memoised on (prediction, gold, deadline): MC rollouts repeat the same few answers many times.
# A timeout is memoised too: re-running a known 5 s hang for every duplicate rollout would
# turn one bad answer into minutes; the timeout was already counted once.
@functools.lru_cache(maxsize=MEMO_SIZE)
def _math_equal_slow(pred: str, gold: str, timeout_s: float) -> bool:
    return _run_in_worker(gold, pred, timeout_s)


# -----------------------------------------------------------------------------
# the worker pool: plain subprocesses speaking one JSON line per request.
#
# Why not math-verify's own timeout: it uses signal.alarm, which raises off the main thread
# (threads, Ray actors, servers). Why not multiprocessing/ProcessPoolExecutor: a torch
# DataLoader worker is a daemonic process and may not have multiprocessing children, and a
# pool cannot kill just the one hung worker. A Popen child works from anywhere, can be killed
# alone, and we wait on its pipe with a selector deadline, which works in any thread.

_WORKER_CODE = (
    "import importlib.util, sys\n"
    "sys.path = [p for p in sys.path if p not in ('', '.')]\n"  # cwd must not shadow modules
    "spec = importlib.util.spec_from_file_location('eightfold_verify_worker', sys.argv[1])\n"
    "m = importlib.util.module_from_spec(spec)\n"
    "spec.loader.exec_module(m)\n"
    "m._worker_main()\n"
)  # loads this file by path: the worker does not import the eightfold package (or torch)


class _Worker:
    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _WORKER_CODE, os.path.abspath(__file__)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            bufsize=0,
        )
        self.buffer = b""
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.proc.stdout, selectors.EVENT_READ)

    def readline(self, timeout_s: float) -> bytes | None:
        """One reply line; None on deadline; b"" if the worker died."""
        deadline = time.monotonic() + timeout_s
        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not self.selector.select(left):
                return None
            chunk = os.read(self.proc.stdout.fileno(), 4096)
            if not chunk:
                return b""
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line

    def ask(self, request: bytes, timeout_s: float) -> str:
        """'1' / '0' (the verdict), 'e' (exception in the worker), 'dead' or 'timeout'."""
        try:
            self.proc.stdin.write(request)
        except OSError:
            return "dead"
        reply = self.readline(timeout_s)
        if reply is None:
            return "timeout"
        return reply.decode("ascii", "replace") if reply else "dead"

    def kill(self) -> None:
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait(timeout=5)
        self.close()

    def close(self) -> None:
        self.selector.close()
        for pipe in (self.proc.stdin, self.proc.stdout):
            with contextlib.suppress(OSError):
                pipe.close()


_POOL_LOCK = threading.Lock()
_IDLE: list[_Worker] = []
_SLOTS = threading.BoundedSemaphore(MAX_WORKERS)


def _checkout() -> _Worker | None:
    with _POOL_LOCK:
        while _IDLE:
            worker = _IDLE.pop()
            if worker.proc.poll() is None:
                return worker
            worker.close()  # died while idle (OOM killer, ...): drop it, try the next
    _count("worker_starts")
    try:
        worker = _Worker()
    except OSError:
        return None
    if worker.readline(WORKER_START_TIMEOUT_S) != b"ready":
        worker.kill()
        return None
    return worker


def _run_in_worker(gold: str, pred: str, timeout_s: float) -> bool:
    request = (json.dumps([gold, pred]) + "\n").encode("ascii")  # ensure_ascii: one line
    with _SLOTS:
        worker = _checkout()
        if worker is None:
            _count("worker_errors")
            raise _WorkerUnavailable
        _count("worker_calls")
        reply = worker.ask(request, timeout_s)
        if reply in ("1", "0", "e"):
            with _POOL_LOCK:
                _IDLE.append(worker)
            if reply == "e":
                _count("worker_errors")
            return reply == "1"
        worker.kill()  # hung or dead: never reuse it, the next call spawns a fresh one
        _count("timeouts" if reply == "timeout" else "worker_errors")
        return False


def shutdown_workers() -> None:
    """Kill the idle worker processes (they are also reaped at exit, and exit on their own
    when this process dies). The next math-verify call starts a fresh one."""
    with _POOL_LOCK:
        workers, _IDLE[:] = list(_IDLE), []
    for worker in workers:
        worker.kill()


def _forget_workers_after_fork() -> None:
    # A forked child (e.g. a DataLoader worker) must not talk to its parent's workers through
    # the inherited pipes, and must not inherit a lock someone held at fork time.
    global _POOL_LOCK, _SLOTS, _STATS_LOCK
    for worker in _IDLE:
        worker.close()
    _IDLE.clear()
    _POOL_LOCK, _SLOTS = threading.Lock(), threading.BoundedSemaphore(MAX_WORKERS)
    _STATS_LOCK = threading.Lock()


os.register_at_fork(after_in_child=_forget_workers_after_fork)
atexit.register(shutdown_workers)

# -----------------------------------------------------------------------------
# inside the worker process

_LATEX_CONFIG = None


def _load_math_verify():
    global _LATEX_CONFIG
    from math_verify import LatexExtractionConfig
    from math_verify.parser import NormalizationConfig

    # The reward config from math-verify's README, with malformed_operators on so that
    # \frac12 and \sqrt2 parse. LaTeX extraction only: ExprExtractionConfig would run sympy's
    # parse_expr on the text.
    norm = NormalizationConfig(
        basic_latex=True,
        units=True,
        malformed_operators=True,
        nits=True,
        boxed="all",
        equations=False,
    )
    _LATEX_CONFIG = [LatexExtractionConfig(boxed_match_priority=0, normalization_config=norm)]


@functools.lru_cache(maxsize=4096)  # golds repeat for every rollout of a problem
def _parse_latex(answer: str) -> tuple:
    from math_verify import parse
    from sympy import Basic, MatrixBase

    # timeouts off (they are signal.alarm based); the parent's deadline is the timeout.
    # no_fallback: an unparsable answer yields nothing, so it can never "match" by string.
    parsed = parse(
        "\\boxed{" + answer + "}",
        extraction_config=_LATEX_CONFIG,
        fallback_mode="no_fallback",
        parsing_timeout=None,
    )
    return tuple(x for x in parsed if isinstance(x, (Basic, MatrixBase)) and not _degenerate(x))


def _degenerate(x) -> bool:
    """Relations between constants (0=0, 1<2) and bare True/False compare equal to each
    other whatever the question was (math-verify #60): never accept them."""
    from sympy.logic.boolalg import BooleanAtom

    if isinstance(x, BooleanAtom):
        return True
    return bool(getattr(x, "is_Relational", False)) and not x.free_symbols


def _exactly_different(g, p) -> bool:
    """math-verify compares numbers after rounding (1/2004! == 1/2006!, #14). When both sides
    are exact numeric expressions, evaluate them to rationals and veto if they differ."""
    from sympy import Expr, Float, Rational

    if not all(isinstance(x, Expr) and x.is_number and not x.has(Float) for x in (g, p)):
        return False
    g, p = g.doit(), p.doit()
    return isinstance(g, Rational) and isinstance(p, Rational) and g != p


def _compare_in_worker(gold: str, pred: str) -> bool:
    from math_verify import verify

    gold_parsed, pred_parsed = _parse_latex(gold), _parse_latex(pred)
    if not gold_parsed or not pred_parsed:
        return False
    if not verify(list(gold_parsed), list(pred_parsed), timeout_seconds=None):  # gold first
        return False
    return not _exactly_different(gold_parsed[0], pred_parsed[0])


def _worker_main() -> None:
    import logging
    import signal

    # Protocol goes to a private copy of stdout; fd 1 becomes stderr so that a stray print in
    # a library can never corrupt a reply.
    out = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's business
    try:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (WORKER_MEMORY_BYTES, WORKER_MEMORY_BYTES))
    except (ImportError, ValueError, OSError):
        pass
    parent = os.getppid()

    def exit_when_orphaned() -> None:  # also covers a parent killed with SIGKILL mid-request
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=exit_when_orphaned, daemon=True).start()
    logging.getLogger("math_verify").setLevel(logging.ERROR)  # "timeout is disabled" warnings
    _load_math_verify()
    _compare_in_worker("1", "1")  # warm up the ANTLR parser before taking real deadlines
    out.write(b"ready\n")
    for line in sys.stdin.buffer:  # EOF when the parent closes the pipe or exits
        try:
            gold, pred = json.loads(line)
            reply = b"1\n" if _compare_in_worker(gold, pred) else b"0\n"
        except Exception:  # includes MemoryError from the rlimit and RecursionError
            reply = b"e\n"
        out.write(reply)


# -----------------------------------------------------------------------------
# public API


def _check_kind(kind: object) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown verifier kind {kind!r}; valid kinds: {', '.join(KINDS)}")


def extract_answer(completion: str, kind: str) -> str | None:
    """The answer a completion commits to, or None (no answer, ambiguous, malformed, capped).

    procedural -> "5" for a last line "#5"; gsm8k -> "1234" for "#### 1,234";
    math -> the raw content of the last \\boxed{}; star_graph -> "k,d,q,z" for one node a line.
    """
    _check_kind(kind)
    if not _usable_text(completion):
        return None
    if kind == "procedural":
        return _extract_procedural(completion)
    if kind == "gsm8k":
        return _extract_gsm8k(completion)
    if kind == "star_graph":
        return _extract_star_graph(completion)
    return _extract_math(completion)


def is_correct(
    completion: str, reference: str, kind: str, *, timeout_s: float | None = None
) -> bool:
    """Binary reward: does `completion` end with the answer `reference`?

    timeout_s bounds the math-verify comparison (default TIMEOUT_S); on timeout the worker
    is killed and the answer scores False (see stats()["timeouts"]).
    """
    _check_kind(kind)
    if not (_usable_text(completion) and _usable_text(reference)):
        _count("rejected")
        return False
    if kind == "procedural":
        answer, ref = _extract_procedural(completion), _procedural_reference(reference)
    elif kind == "gsm8k":
        answer, ref = _extract_gsm8k(completion), _gsm8k_reference(reference)
    elif kind == "star_graph":
        answer, ref = _extract_star_graph(completion), _star_graph_reference(reference)
    else:
        answer, ref = _extract_math(completion), _math_reference(reference)
    if ref is None:
        _count("bad_reference")
        return False
    if answer is None:
        _count("format_fail")
        return False
    if kind == "procedural":
        return int(answer) == ref
    if kind == "gsm8k":
        return Fraction(answer) == ref
    if kind == "star_graph":
        return answer == ref
    return _math_equal(answer, ref, TIMEOUT_S if timeout_s is None else float(timeout_s))
