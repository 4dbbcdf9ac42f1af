"""Tests for eightfold.verify: formats, LaTeX equivalence, adversarial input, the worker timeout.

No test asserts on wall-clock time: deadlines are checked through return values and the
timeout counter, which the real worker machinery maintains.
"""

import multiprocessing
import os
import threading
from pathlib import Path

import pytest

import eightfold.verify as v


@pytest.fixture(autouse=True)
def fresh_stats():
    v.reset_stats()
    yield


def run_in_thread(fn):
    out = []
    t = threading.Thread(target=lambda: out.append(fn()))
    t.start()
    t.join(timeout=120)
    assert not t.is_alive()
    return out[0]


# -----------------------------------------------------------------------------
# steps


def test_split_steps_strips_and_drops_empty_lines():
    solution = "  c=3*4=5 \n\n\td=5+1=6\r\n   \n#6\n"
    assert v.split_steps(solution) == ["c=3*4=5", "d=5+1=6", "#6"]
    assert v.split_steps("") == []
    assert v.split_steps("\n \n") == []


def test_join_steps_inverts_split_steps():
    steps = ["c=3*4=5", "d=5+1=6", "#6"]
    assert v.join_steps(steps) == "c=3*4=5\nd=5+1=6\n#6"
    assert v.split_steps(v.join_steps(steps)) == steps


# -----------------------------------------------------------------------------
# procedural


@pytest.mark.parametrize(
    "completion, reference, expected",
    [
        ("c=3*4=5\nd=5+1=6\n#6", "6", True),
        ("c=3*4=5\nd=5+1=6\n#6", "#6", True),  # reference may carry the '#'
        ("c=3*4=5\n#6\n\n  \n", "6", True),  # trailing blank lines are not steps
        ("#-3", "-3", True),
        ("#06", "6", True),  # compared as integers
        ("c=3*4=5\nd=5+1=6\n#6", "5", False),  # wrong answer
        ("#6\nc=3*4=5", "6", False),  # answer not on the last line
        ("c=3*4=5\n#6x", "6", False),
        ("c=3*4=5\n# 6", "6", False),
        ("c=3*4=5\n#6#6", "6", False),
        ("c=3*4=5\n#6\n#6", "6", False),  # two answer lines, even equal ones
        ("c=3*4=5\n#5\n#6", "6", False),
        ("c=3*4=5 #6", "6", False),  # answer must be the whole last line
        ("c=3*4=5\n6", "6", False),  # no '#'
        ("c=3*4=5\n#\u0666", "6", False),  # Arabic-Indic six: int() would accept it, we don't
        ("", "6", False),
    ],
)
def test_procedural(completion, reference, expected):
    assert v.is_correct(completion, reference, "procedural") is expected


def test_procedural_extract_and_counters():
    assert v.extract_answer("c=3*4=5\n#5", "procedural") == "5"
    assert v.extract_answer("c=3*4=5\n#5x", "procedural") is None
    assert v.is_correct("c=3*4=5\n#5x", "5", "procedural") is False
    assert v.is_correct("c=3*4=5\n#5", "five", "procedural") is False  # bad reference
    s = v.stats()
    assert s["format_fail"] == 1 and s["bad_reference"] == 1


# -----------------------------------------------------------------------------
# gsm8k


@pytest.mark.parametrize(
    "completion, reference, expected",
    [
        ("She pays 1234 in total.\n#### 1,234", "1234", True),
        ("#### 1234", "1,234", True),
        ("#### 18", "18.0", True),
        ("#### 18.00", "18", True),
        ("#### -3.5", "-3.50", True),
        ("#### $18", "18", True),
        ("#### 18.", "18", True),  # sentence-final period
        ("#### 72", "Natalia sold 48/2 = <<48/2=24>>24 clips.\n#### 72", True),  # raw GSM8K
        ("#### 72\nso #### 72", "72", True),  # the same answer twice is fine
        ("#### 18", "18.5", False),
        ("#### -18", "18", False),
        ("The answer is 18", "18", False),  # no marker: never "the last number"
        ("3 + 15 = 18", "18", False),
        ("#### 5\nactually #### 18", "18", False),  # two different answers
        ("#### 18\n#### ", "18", False),  # a marker without a number
        ("#### 12,34", "1234", False),  # malformed thousands grouping
        ("#### 18abc", "18", False),
        ('#### __import__("os")', "18", False),
    ],
)
def test_gsm8k(completion, reference, expected):
    assert v.is_correct(completion, reference, "gsm8k") is expected


def test_gsm8k_extract():
    assert v.extract_answer("blah\n#### 1,234", "gsm8k") == "1234"
    assert v.extract_answer("blah 1,234", "gsm8k") is None
    assert v.is_correct("#### 5", "no number here", "gsm8k") is False
    assert v.stats()["bad_reference"] == 1


# -----------------------------------------------------------------------------
# math


@pytest.mark.parametrize(
    "completion, reference",
    [
        (r"so the answer is $\boxed{0.5}$.", r"\frac{1}{2}"),
        (r"\boxed{\dfrac{1}{2}}", "0.5"),
        (r"\boxed{\frac12}", r"\boxed{0.5}"),
        (r"\boxed{\dfrac12}", r"\frac{1}{2}"),
        (r"\boxed{-\frac{3}{4}}", "-0.75"),
        (r"\boxed{10\%}", "10"),
        (r"\boxed{[1, 2)}", r"[1,2)"),
        (r"\boxed{(-\infty, 3]}", r"(-\infty,3]"),
        (r"\boxed{\{2, 1\}}", r"\{1,2\}"),
        (r"\boxed{2\sqrt{2}}", r"\sqrt{8}"),
        (r"\boxed{\frac{\sqrt{8}}{2}}", r"\sqrt{2}"),  # nested braces inside the box
        (r"\boxed{\frac{1}{\sqrt{2}}}", r"\frac{\sqrt{2}}{2}"),
        (r"\boxed{x^2 + 2x + 1}", r"(x+1)^2"),
        (r"\boxed{e^{-x^{2}}}", r"\frac{1}{e^{x^2}}"),  # a symbolic tower is not "explosive"
        (r"first \boxed{3}, no wait: \boxed{4}", "4"),  # the last box counts
        (r"\boxed{\begin{pmatrix} 1 \\ 2 \end{pmatrix}}", r"\begin{pmatrix}1\\2\end{pmatrix}"),
    ],
)
def test_math_equivalent(completion, reference):
    assert v.is_correct(completion, reference, "math") is True


@pytest.mark.parametrize(
    "completion, reference",
    [
        (r"\boxed{0.333}", r"\frac{1}{3}"),  # exact comparison on the fast path
        (r"\boxed{(1, 2)}", r"[1,2)"),
        (r"\boxed{\{1, 3\}}", r"\{1,2\}"),
        (r"\boxed{2\sqrt{3}}", r"\sqrt{8}"),
        (r"\boxed{\frac{1}{2006!}}", r"\frac{1}{2004!}"),  # math-verify's rounding says equal
        (r"\boxed{0=0}", "1=1"),  # degenerate relations
        (r"\boxed{3}, no wait: \boxed{4}", "3"),
        (r"\boxed{@@}", "@@"),  # unparsable never matches unparsable, even when identical
        (r"\boxed{}", r"\boxed{}"),
        ("no box, the answer is 5", "5"),
        (r"\boxed{5", "5"),  # unterminated
    ],
)
def test_math_not_equivalent(completion, reference):
    assert v.is_correct(completion, reference, "math") is False


def test_math_extract_brace_matching():
    assert v.extract_answer(r"so $\boxed{\frac{\sqrt{2}}{2}}$.", "math") == r"\frac{\sqrt{2}}{2}"
    assert v.extract_answer(r"\boxed{\left\{ 1 \right.}", "math") == r"\left\{ 1 \right."
    assert v.extract_answer(r"\boxed{1} then \fbox{2}", "math") == "2"
    assert v.extract_answer(r"\boxed{}", "math") is None
    assert v.extract_answer(r"\boxed{{1}", "math") is None


def test_math_fast_path_and_memo():
    assert v.is_correct(r"\boxed{\frac{6}{4}}", "1.5", "math")
    s = v.stats()
    assert s["fast_path"] == 1 and s["worker_calls"] == 0
    for _ in range(3):
        assert v.is_correct(r"\boxed{\sqrt{4}+\pi}", r"2+\pi", "math")
    s = v.stats()
    assert s["worker_calls"] == 1 and s["memo_hits"] == 2


# -----------------------------------------------------------------------------
# adversarial input: False, quickly, without running anything

PWNED = Path("/tmp/pwned_eightfold")

ADVERSARIAL = [
    (r"\boxed{__import__('os').system('touch /tmp/pwned_eightfold')}", "0", "math"),
    (r"\boxed{__import__('os').system('touch /tmp/pwned_eightfold')}", "0", "math"),
    (r"\boxed{\text{__import__('os').system('touch /tmp/pwned_eightfold')}}", "0", "math"),
    (r"\boxed{eval(\"__import__('os').system('touch /tmp/pwned_eightfold')\")}", "0", "math"),
    ('#### __import__("os").system("touch /tmp/pwned_eightfold")', "0", "gsm8k"),
    ("#__import__('os').system('touch /tmp/pwned_eightfold')", "0", "procedural"),
    (r"\boxed{9**9**9**9}", "5", "math"),
    (r"\boxed{9**9**9**9}", "9**9**9**9", "math"),
    (r"\boxed{9^{9^{9^{9}}}}", "5", "math"),
    (r"\boxed{9^{9^{9^{9}}}}", r"9^{9^{9^{9}}}", "math"),
    (r"\boxed{9^9^9}", "5", "math"),
    (r"\boxed{2^{99999999}}", "5", "math"),
    (r"\boxed{99999999!}", "5", "math"),
    (r"\boxed{((9!)!)!}", "5", "math"),
    ("#### 9**9**9**9", "5", "gsm8k"),
    ("#9**9**9**9", "5", "procedural"),
    (r"\boxed" + "{" * 100_000 + "1" + "}" * 100_000, "1", "math"),
    (r"\boxed{" + "{" * 5_000 + "1" + "}" * 5_001, "1", "math"),  # under the length cap
    ("x" * 1_000_000 + r"\boxed{1}", "1", "math"),  # 1 MB
    ("x" * 1_000_000 + "\n#1", "1", "procedural"),
    ("x" * 1_000_000 + "\n#### 1", "1", "gsm8k"),
    (r"\boxed{" + "1" * 5_000 + "}", "1" * 5_000, "math"),
    (None, "1", "math"),
    (r"\boxed{1}", None, "math"),
    (None, None, "gsm8k"),
    (None, None, "procedural"),
    (b"\\boxed{1}", "1", "math"),
    (b"#1", "1", "procedural"),
    (1, "1", "procedural"),
    (["#1"], "1", "procedural"),
    (b"\\boxed{1}\xff\xfe".decode("utf-8", "surrogateescape"), "1", "math"),
    (b"#### 1\xc3\x28".decode("utf-8", "surrogateescape"), "1", "gsm8k"),
    (bytes(range(256)).decode("utf-8", "surrogateescape") + "\n#1", "1", "procedural"),
    (os.urandom(4096).decode("utf-8", "surrogateescape") + r"\boxed{1}", "1", "math"),
]


@pytest.mark.parametrize("completion, reference, kind", ADVERSARIAL)
def test_adversarial_is_false(completion, reference, kind):
    assert v.is_correct(completion, reference, kind) is False
    assert v.stats()["timeouts"] == 0  # decided by the caps/parser, not by the deadline
    assert not PWNED.exists()


def test_adversarial_extract_is_none():
    for completion, _, kind in ADVERSARIAL:
        answer = v.extract_answer(completion, kind)
        assert answer is None or len(answer) <= v.MAX_ANSWER_CHARS


def test_nesting_is_capped_even_without_the_length_cap(monkeypatch):
    monkeypatch.setattr(v, "MAX_COMPLETION_CHARS", 10**7)
    deep = r"\boxed" + "{" * 100_000 + "1" + "}" * 100_000
    assert v.extract_answer(deep, "math") is None
    assert v.is_correct(deep, "1", "math") is False


def test_injection_is_never_executed(tmp_path):
    target = tmp_path / "pwned"
    payloads = [
        rf"\boxed{{__import__('os').system('touch {target}')}}",
        rf"\boxed{{\text{{exec('open(\"{target}\",\"w\")')}}}}",
        rf"\boxed{{x}} and {{}}.__class__ \boxed{{os.system('touch {target}')}}",
    ]
    for p in payloads:
        assert v.is_correct(p, "0", "math") is False
        v.is_correct(p, p, "math")  # the payload as gold too: whatever it says, nothing runs
    assert not target.exists()


# -----------------------------------------------------------------------------
# kinds


@pytest.mark.parametrize("kind", ["MATH", "gsm", "", None])
def test_unknown_kind_raises(kind):
    with pytest.raises(ValueError, match="unknown verifier kind") as err:
        v.is_correct("#1", "1", kind)
    assert repr(kind) in str(err.value) and "procedural, gsm8k, math" in str(err.value)
    with pytest.raises(ValueError, match="unknown verifier kind"):
        v.extract_answer(None, kind)  # the kind is checked before the input


# -----------------------------------------------------------------------------
# the worker deadline: the real machinery, with a worker made slow on purpose.
# Only the comparison function inside the child is replaced (through the worker's start-up
# code); spawning, the pipe deadline, killing and recycling are the production code paths.

SLOW_MARKER = r"\slowcase"


@pytest.fixture
def slow_worker(monkeypatch):
    patched = v._WORKER_CODE.replace(
        "m._worker_main()\n",
        "import time\n"
        "real = m._compare_in_worker\n"
        f"m._compare_in_worker = lambda g, p: time.sleep(60) if {SLOW_MARKER!r} in p else real(g, p)\n"
        "m._worker_main()\n",
    )
    assert patched != v._WORKER_CODE
    v.shutdown_workers()  # idle workers run the old code
    monkeypatch.setattr(v, "_WORKER_CODE", patched)
    yield
    v.shutdown_workers()


def test_timeout_fires_and_worker_is_recycled(slow_worker):
    slow = rf"\boxed{{x + {SLOW_MARKER}}}"
    assert v.is_correct(slow, "x", "math", timeout_s=0.5) is False
    s = v.stats()
    assert s["timeouts"] == 1 and s["worker_calls"] == 1 and s["worker_starts"] == 1

    # the hung worker was killed: the next comparison gets a fresh worker, which answers
    assert v.is_correct(r"\boxed{\sqrt{9}}", "3.0", "math", timeout_s=5) is True
    s = v.stats()
    assert s["timeouts"] == 1 and s["worker_calls"] == 2 and s["worker_starts"] == 2

    # the timed-out pair is memoised: a duplicate rollout does not wait again
    assert v.is_correct(slow, "x", "math", timeout_s=0.5) is False
    assert v.stats()["timeouts"] == 1 and v.stats()["memo_hits"] == 1


def test_real_slow_case_hits_the_deadline():
    # passes the cheap screens (no numeric tower, short literals) but sympy would multiply
    # out a ~10^8-digit integer: the deadline (or the worker's memory cap) must end it
    slow = r"\boxed{\prod_{k=1}^{9999} k^{k}}"
    assert v.is_correct(slow, "5", "math", timeout_s=1.0) is False
    s = v.stats()
    assert s["worker_calls"] == 1 and s["timeouts"] + s["worker_errors"] == 1
    assert v.is_correct(r"\boxed{\sqrt{16}}", "4.0", "math") is True  # a fresh worker answers


def test_timeout_fires_off_the_main_thread(slow_worker):
    slow = rf"\boxed{{y + {SLOW_MARKER}}}"
    assert run_in_thread(lambda: v.is_correct(slow, "y", "math", timeout_s=0.5)) is False
    assert v.stats()["timeouts"] == 1
    assert run_in_thread(lambda: v.is_correct(r"\boxed{\frac{\pi}{2}}", r"\pi/2", "math")) is True
    assert v.stats()["timeouts"] == 1 and v.stats()["worker_errors"] == 0


def test_concurrent_threads():
    jobs = [(rf"\boxed{{\sqrt{{{n * n}}}}}", str(n)) for n in range(2, 10)]
    results = [None] * len(jobs)

    def work(i):
        results[i] = v.is_correct(jobs[i][0], jobs[i][1], "math")

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert results == [True] * len(jobs)
    s = v.stats()
    assert s["worker_calls"] == len(jobs) and s["timeouts"] == 0 and s["worker_errors"] == 0


def _verify_in_child(queue):
    queue.put(
        (
            v.is_correct(r"\boxed{\sqrt{12}}", r"2\sqrt{3}", "math"),
            v.is_correct(r"\boxed{\sqrt{12}}", r"3\sqrt{2}", "math"),
            v.stats()["worker_calls"],
        )
    )


def test_works_in_a_daemonic_forked_process():
    # DataLoader workers are daemonic forked processes: multiprocessing children are not
    # allowed there, and inherited worker pipes must not be reused.
    assert v.is_correct(r"\boxed{\sqrt{2}^2}", "2", "math")  # parent now has an idle worker
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_verify_in_child, args=(queue,), daemon=True)
    child.start()
    same, different, calls = queue.get(timeout=120)
    child.join(timeout=30)
    assert (same, different) == (True, False) and calls >= 2
    assert v.is_correct(r"\boxed{\sqrt{3}^2}", "3", "math")  # parent's worker still fine
