"""Teachers: what writes the solutions of D_syn. Selected by the ``teacher`` config group.

    procedural  the generator's own solutions, with injected errors at a known step: a wrong
                step (propagated, final answer wrong) with ``error_rate``, a spurious step (a wrong
                intermediate value, a useless extra step or a prompt's distractor computed, final
                answer still right: the failure mode RFT amplifies) with ``spurious_rate``.
    hf          any local transformers causal LM (a directory in save_pretrained format, e.g. an
                SFT run's ``model/``), batched sampling through ``eightfold.generation.generate``.
    openai      any OpenAI-compatible ``/chat/completions`` endpoint (OpenAI, Gemini via a proxy,
                vLLM) through the official ``openai`` client, in threads: retries with seeded
                exponential backoff and jitter, Retry-After, a concurrency limit, per-request
                timeouts. The API key is read from the environment variable named by
                ``api_key_env``; it is never a config value and never logged.

A teacher maps a list of ``Task`` to one list of samples per task, yielded in task order, so the
caller can append each result to a resumable file as soon as it exists. Every sample is a dict
with at least ``text``. ``key()`` is everything about the teacher that decides its outputs (the
cache key part); operational knobs (concurrency, retries, device) are left out of it.

Teacher output is untrusted text: it is only ever sliced and matched with regexes, never evaluated.
"""

from __future__ import annotations

import email.utils
import hashlib
import inspect
import logging
import math
import os
import random
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from eightfold.data.arithmetic import STEP_RE, Problem, apply, insert_distractor
from eightfold.runfiles import fingerprint_path
from eightfold.verify import join_steps, split_steps

log = logging.getLogger("eightfold.teachers")

NAMES = ("procedural", "hf", "openai")
MODES = (
    "solve",
    "rewrite",
)  # solve the seed problem as is | write a new problem like it, then solve it

# Filled into a template's {answer_format}: the output contract of each verifier kind.
ANSWER_FORMATS = {
    "procedural": "Write one step per line and end with a line #<answer>.",
    "gsm8k": "Write one step per line and end with a line '#### <number>'.",
    "math": "Write one step per line and put the final answer in \\boxed{}.",
}


@dataclass(frozen=True)
class Task:
    index: int  # position in the seed stream: per-task seeds derive from it, never from batching
    prompt: str  # the rendered teacher prompt
    question: str  # the seed problem
    problem: Problem | None = None  # procedural seeds only


class Teacher(Protocol):
    name: str
    batch_size: int  # tasks per generate() call
    aligned: bool  # True: outputs depend on the batch a task is in, so batches start at multiples of batch_size

    def key(self) -> dict: ...

    def generate(self, tasks: Sequence[Task], seed: int) -> Iterator[list[dict]]: ...


class TeacherError(RuntimeError):
    """A teacher could not produce a result (after its retries)."""


def render(template: str, question: str, kind: str, solution: str | None = None) -> str:
    """Fill ``{question}``, ``{answer_format}``, ``{solution}``. Plain replacement, not str.format:
    LaTeX in MATH questions and templates is full of braces."""
    return (
        template.replace("{answer_format}", ANSWER_FORMATS[kind])
        .replace("{solution}", solution or "")
        .replace("{question}", question)
    )


def stable_int(*parts: Any) -> int:
    """A 63-bit seed from parts, the same in every process (hash() is randomised per process)."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "big") >> 1


def _check_keys(cfg: dict, valid: Sequence[str], where: str) -> None:
    if "api_key" in cfg:
        raise ValueError(
            f"{where}.api_key is not allowed: put the key in the environment variable named by"
            f" {where}.api_key_env (e.g. OPENAI_API_KEY) so it is never written into saved configs"
        )
    unknown = sorted(set(cfg) - set(valid))
    if unknown:
        raise ValueError(
            f"{where} has unknown keys {unknown}; valid keys: {', '.join(sorted(valid))}"
        )


def _rate(value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ValueError(
            f"data.teacher.{key}={value!r} is not valid: expected a probability in [0, 1]"
        )
    return float(value)


def _positive(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"data.teacher.{key}={value!r} is not valid: expected a positive integer")
    return value


# -----------------------------------------------------------------------------
# procedural


SPURIOUS_KINDS = ("wrong_value", "extra_step", "distractor")
# distractor (the choice variant, data.task.distractors) is opt-in: the default draws stay put
DEFAULT_SPURIOUS_KINDS = ("wrong_value", "extra_step")


class ProceduralTeacher:
    """The generator's solution, corrupted at a known step with the configured probabilities.

    The clean trace of task i is ``problem.solution(Random(f"teacher-{seed}-{i}"))``, the same
    string the ``procedural`` source trains on, so with both rates at 0 this teacher reproduces
    that source exactly. Corruption decisions use a separate per-task RNG: changing a rate never
    changes the clean traces or which order a solution is written in.
    """

    name = "procedural"
    aligned = False

    def __init__(
        self,
        error_rate: float = 0.0,
        spurious_rate: float = 0.0,
        spurious_kinds: Sequence[str] = DEFAULT_SPURIOUS_KINDS,
        samples: int = 1,
        batch_size: int = 1024,
    ):
        self.error_rate = _rate(error_rate, "error_rate")
        self.spurious_rate = _rate(spurious_rate, "spurious_rate")
        if self.error_rate + self.spurious_rate > 1:
            raise ValueError(
                f"data.teacher.error_rate + spurious_rate = {self.error_rate + self.spurious_rate} is not valid:"
                " the two are exclusive probabilities, their sum must be <= 1"
            )
        bad = [k for k in spurious_kinds if k not in SPURIOUS_KINDS]
        if bad or not spurious_kinds:
            raise ValueError(
                f"data.teacher.spurious_kinds={list(spurious_kinds)!r} is not valid: a non-empty subset of {SPURIOUS_KINDS}"
            )
        self.spurious_kinds = tuple(spurious_kinds)
        self.samples = _positive(samples, "samples")
        self.batch_size = _positive(batch_size, "batch_size")

    def key(self) -> dict:
        return {
            "name": self.name,
            "error_rate": self.error_rate,
            "spurious_rate": self.spurious_rate,
            "spurious_kinds": list(self.spurious_kinds),
            "samples": self.samples,
        }

    def generate(self, tasks: Sequence[Task], seed: int) -> Iterator[list[dict]]:
        for task in tasks:
            if task.problem is None:
                raise TeacherError(
                    "the procedural teacher needs procedural seeds (data.source=procedural_teacher)"
                )
            yield [self.sample(task.problem, task.index, k, seed) for k in range(self.samples)]

    def sample(self, problem: Problem, index: int, k: int, seed: int) -> dict:
        suffix = "" if k == 0 else f"-{k}"  # sample 0 is the procedural source's trace
        clean = problem.solution(random.Random(f"teacher-{seed}-{index}{suffix}"))
        rng = random.Random(f"procedural-teacher-{seed}-{index}{suffix}")
        u = rng.random()
        if u < self.error_rate:
            text, step = corrupt(problem, clean, rng, propagate=True)
            return {"text": text, "injected": "wrong", "injected_step": step}
        if u < self.error_rate + self.spurious_rate:
            kind = rng.choice(self.spurious_kinds)
            if kind == "wrong_value":
                text, step = corrupt(problem, clean, rng, propagate=False)
            elif kind == "distractor":  # a prompt's distractor computed; none: an extra step
                text, step = insert_distractor(problem, clean, rng) or extra_step(
                    problem, clean, rng
                )
            else:
                text, step = extra_step(problem, clean, rng)
            return {"text": text, "injected": f"spurious:{kind}", "injected_step": step}
        return {"text": clean, "injected": "clean", "injected_step": None}


def corrupt(
    problem: Problem, solution: str, rng: random.Random, propagate: bool
) -> tuple[str, int]:
    """Change one step's result to a wrong value. ``propagate``: later steps compute with the
    wrong value (every op is injective in each operand, so the answer ends wrong); otherwise
    later steps use the true value (a slip that the trace recovers from: right answer, wrong step).
    Returns (solution, index of the corrupted step)."""
    lines = split_steps(solution)
    step = rng.randrange(len(lines) - 1)  # any computation line, not the answer line
    m = problem.modulus
    env = dict(problem.givens)
    out = []
    for i, line in enumerate(lines[:-1]):
        var, lname, op, rname = STEP_RE.match(line).group(1, 2, 3, 4)
        left = env[lname] if lname.isalpha() else int(lname)  # + and * may show the digit first
        right = env[rname] if rname.isalpha() else int(rname)
        result = apply(op, left, right, m)
        shown = (result + rng.randrange(1, m)) % m if i == step else result
        env[var] = shown if propagate else result
        out.append(f"{var}={lname}{op}{rname}={left}{op}{right}={shown}")
    out.append(f"#{env[problem.target]}")
    return join_steps(out), step


def extra_step(problem: Problem, solution: str, rng: random.Random) -> tuple[str, int]:
    """Insert a correct but useless step that defines a variable the problem never uses."""
    used = {v for v, _ in problem.givens} | {s.var for s in problem.steps}
    fresh = next((c for c in "zyxwvutsrqponmlkjihgfedcba" if c not in used), None)
    if fresh is None:  # all 26 letters taken: a recovered wrong value is the other spurious kind
        return corrupt(problem, solution, rng, propagate=False)
    lines = split_steps(solution)
    step = rng.randrange(len(lines))  # before any line, including the answer line
    env = problem.values()
    defined = [v for v, _ in problem.givens] + [STEP_RE.match(x).group(1) for x in lines[:step]]
    base = rng.choice(defined)
    op = rng.choice("+-*")
    digit = rng.randrange(1, problem.modulus)
    value = apply(op, env[base], digit, problem.modulus)
    lines.insert(step, f"{fresh}={base}{op}{digit}={env[base]}{op}{digit}={value}")
    return join_steps(lines), step


# -----------------------------------------------------------------------------
# hf


class HFTeacher:
    """Batched sampling from a local causal LM: ``samples`` completions per prompt.

    ``aligned``: a batch is sampled from one seeded RNG stream, so a task's samples depend on its
    batch; batches therefore always start at multiples of ``batch_size`` (a resumed or extended
    stream regenerates the batch it stopped in and drops what is already stored).
    """

    name = "hf"
    aligned = True

    def __init__(
        self,
        model,
        tokenizer,
        model_id: str,
        temperature: float = 0.7,
        top_p: float = 0.95,
        samples: int = 1,
        max_new_tokens: int = 256,
        batch_size: int = 64,
        prompt_template: str = "{question}",
        mode: str = "solve",
        loader: Callable[[], tuple[Any, Any]] | None = None,
    ):
        # model/tokenizer may be None with a loader: the model is loaded at the first generate(),
        # so a run whose data is already cached never loads it.
        self._model, self._tokenizer, self._loader = model, tokenizer, loader
        if model is None and loader is None:
            raise ValueError("HFTeacher needs a model and tokenizer, or a loader")
        self.model_id = model_id
        if (
            isinstance(temperature, bool)
            or not isinstance(temperature, (int, float))
            or temperature < 0
        ):
            raise ValueError(
                f"data.teacher.temperature={temperature!r} is not valid: expected a number >= 0 (0 = greedy)"
            )
        if not 0 < top_p <= 1:
            raise ValueError(f"data.teacher.top_p={top_p!r} is not valid: expected 0 < top_p <= 1")
        self.temperature, self.top_p = float(temperature), float(top_p)
        self.samples = _positive(samples, "samples")
        self.max_new_tokens = _positive(max_new_tokens, "max_new_tokens")
        self.batch_size = _positive(batch_size, "batch_size")
        self.prompt_template, self.mode = prompt_template, _mode(mode)

    def _loaded(self) -> tuple[Any, Any]:
        if self._model is None:
            self._model, self._tokenizer = self._loader()
        return self._model, self._tokenizer

    @classmethod
    def from_config(cls, cfg: dict) -> HFTeacher:
        cfg = dict(cfg)
        path = cfg.pop("model_path", None)
        if not path or not Path(path).is_dir():
            raise ValueError(
                f"data.teacher.model_path={path!r} is not valid: expected a local model directory in"
                " save_pretrained format (e.g. an SFT run's <run>/model); no hub downloads"
            )
        dtype, device = cfg.pop("dtype", "auto"), cfg.pop("device", "auto")
        attn = cfg.pop("attn_implementation", None)

        def load() -> tuple[Any, Any]:
            from eightfold.models import hf_causal_lm, run_device

            model, tokenizer = hf_causal_lm(str(path), dtype=dtype, attn_implementation=attn)
            return model.to(run_device(device)), tokenizer

        # The checkpoint hash names the teacher: retrained weights at the same path are a new teacher.
        return cls(
            None, None, model_id=f"{Path(path).name}@{fingerprint_path(path)}", loader=load, **cfg
        )

    def key(self) -> dict:
        return {
            "name": self.name,
            "model": self.model_id,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "samples": self.samples,
            "max_new_tokens": self.max_new_tokens,
            "batch_size": self.batch_size,  # decides the RNG stream of each batch (see class doc)
            "prompt_template": self.prompt_template,
            "mode": self.mode,
        }

    def generate(self, tasks: Sequence[Task], seed: int) -> Iterator[list[dict]]:
        from eightfold.generation import generate

        model, tokenizer = self._loaded()
        texts = generate(
            model,
            tokenizer,
            [t.prompt for t in tasks],
            self.max_new_tokens,
            do_sample=self.temperature > 0,
            temperature=self.temperature or 1.0,
            top_p=self.top_p,
            num_samples=self.samples,
            batch_size=len(tasks) * self.samples,
            seed=seed,
        )
        for samples in texts:
            yield [{"text": s} for s in samples]


def _mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(
            f"data.teacher.mode={mode!r} is not valid: expected one of {', '.join(MODES)}"
        )
    return mode


# -----------------------------------------------------------------------------
# openai-compatible endpoints, through the official client


RETRY_STATUS = (408, 409, 425, 429, 500, 502, 503, 504)


class OpenAITeacher:
    """Chat completions from any OpenAI-compatible endpoint through the official ``openai`` client
    (``pip install 'eightfold[openai]'``): bounded concurrency, retries, ordered output.

    The client does the HTTP (connection pool, per-request timeout, typed errors); eightfold keeps
    the retry policy (``max_retries`` with exponential backoff and seeded jitter, Retry-After
    honoured but capped at ``backoff_max_s``, a 429 pausing every worker) because it is part of the
    config and of the run's statistics, so the client's own retries are off.
    """

    name = "openai"
    aligned = False

    def __init__(
        self,
        model: str,
        base_url: str = "https://api.openai.com/v1",
        api_key_env: str | None = "OPENAI_API_KEY",
        temperature: float = 0.7,
        top_p: float = 1.0,
        samples: int = 1,
        max_tokens: int = 1024,
        prompt_template: str = "{question}",
        system_prompt: str | None = None,
        mode: str = "solve",
        send_seed: bool = True,
        concurrency: int = 8,
        max_retries: int = 8,
        backoff_base_s: float = 1.0,
        backoff_max_s: float = 60.0,
        timeout_s: float = 120.0,
        batch_size: int = 256,
    ):
        if not isinstance(model, str) or not model:
            raise ValueError(
                f"data.teacher.model={model!r} is not valid: expected a model name, e.g. gpt-4o-mini"
            )
        _check_base_url(base_url)
        self.model, self.base_url = model, base_url.rstrip("/")
        # Only the variable's NAME is kept in the config; the key is read when the first request
        # is made, so a run whose data is cached needs no key, and no config or log can hold it.
        self.api_key_env = api_key_env or None
        self.temperature, self.top_p = float(temperature), float(top_p)
        self.samples = _positive(samples, "samples")
        self.max_tokens = _positive(max_tokens, "max_tokens")
        self.prompt_template, self.system_prompt, self.mode = (
            prompt_template,
            system_prompt,
            _mode(mode),
        )
        self.send_seed = bool(send_seed)
        self.concurrency = _positive(concurrency, "concurrency")
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise ValueError(
                f"data.teacher.max_retries={max_retries!r} is not valid: expected an integer >= 0"
            )
        self.max_retries = max_retries
        self.backoff_base_s, self.backoff_max_s = float(backoff_base_s), float(backoff_max_s)
        if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or timeout_s <= 0:
            raise ValueError(
                f"data.teacher.timeout_s={timeout_s!r} is not valid: expected seconds > 0, e.g. 120"
            )
        self.timeout_s = float(timeout_s)
        self.batch_size = _positive(batch_size, "batch_size")
        self._client = None
        self._client_lock = threading.Lock()
        self._pause_until = 0.0  # shared by all threads: a 429 slows every worker, not just one
        self._pause_lock = threading.Lock()
        self.stats = {"requests": 0, "retries": 0, "rate_limited": 0}

    def __repr__(self) -> str:  # never show the key
        return f"OpenAITeacher(model={self.model!r}, base_url={self.base_url!r}, api_key_env={self.api_key_env!r})"

    def key(self) -> dict:
        # base_url is left out on purpose: the same model behind another proxy is the same teacher.
        return {
            "name": self.name,
            "model": self.model,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "samples": self.samples,
            "max_tokens": self.max_tokens,
            "prompt_template": self.prompt_template,
            "system_prompt": self.system_prompt,
            "mode": self.mode,
            "send_seed": self.send_seed,
        }

    def generate(self, tasks: Sequence[Task], seed: int) -> Iterator[list[dict]]:
        """Results in task order; at most ``concurrency`` requests in flight. If a task fails after
        its retries the error is raised once every earlier task has been yielded (and stored)."""
        pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="teacher")
        pending: deque[Future] = deque()
        todo = iter(tasks)
        stop = _Stop()
        try:
            for task in todo:
                pending.append(pool.submit(self._samples, task, seed, stop))
                if len(pending) >= 2 * self.concurrency:  # keep workers busy behind a slow head
                    break
            while pending:
                result = pending.popleft().result()
                nxt = next(todo, None)
                if nxt is not None:
                    pending.append(pool.submit(self._samples, nxt, seed, stop))
                yield result
        finally:
            # Also on an early close (the caller has enough): do not start paid requests nobody
            # reads, and let the requests in flight end without their retries.
            stop.fail(-1)
            pool.shutdown(wait=True, cancel_futures=True)

    def _samples(self, task: Task, seed: int, stop: _Stop | None = None) -> list[dict]:
        try:
            return self._task_samples(task, seed, stop or _Stop())
        except BaseException:
            if stop is not None:
                stop.fail(task.index)  # the tasks after it stop retrying: the run fails here
            raise

    def _task_samples(self, task: Task, seed: int, stop: _Stop) -> list[dict]:
        out: list[dict] = []
        attempt_seed = stable_int(seed, task.index)
        while len(out) < self.samples:  # some endpoints ignore n>1: ask again for the rest
            request = self._request(task, self.samples - len(out), attempt_seed + len(out))
            reply = self._create(request, task.index, stop)
            if not reply.choices:
                raise TeacherError(f"task {task.index}: the reply has no choices: {reply!r:.200}")
            for choice in reply.choices[: self.samples - len(out)]:
                content = choice.message.content if choice.message is not None else None
                out.append(
                    {
                        "text": content if isinstance(content, str) else "",
                        "finish_reason": choice.finish_reason,
                    }
                )
        return out

    def _request(self, task: Task, n: int, request_seed: int) -> dict:
        messages = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        messages.append({"role": "user", "content": task.prompt})
        request = {
            "model": self.model,
            "messages": messages,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "max_tokens": self.max_tokens,
            "n": n,
        }
        if self.send_seed:
            request["seed"] = request_seed % 2**31
        return request

    def client(self):
        """The ``openai.OpenAI`` client, made at the first request (one for all threads)."""
        with self._client_lock:
            if self._client is None:
                try:
                    import openai
                except ImportError:
                    raise TeacherError(
                        "teacher@data.teacher=openai needs the openai package, which is not"
                        " installed: pip install 'eightfold[openai]'"
                    ) from None
                self._client = openai.OpenAI(
                    base_url=self.base_url,
                    # A server without auth (api_key_env=null) still gets a placeholder, never
                    # the OPENAI_API_KEY the client would otherwise read from the environment.
                    api_key=self._api_key() if self.api_key_env else "none",
                    timeout=self.timeout_s,
                    max_retries=0,  # the loop in _create retries (see the class doc)
                )
            return self._client

    def _create(self, request: dict, index: int, stop: _Stop | None = None):
        import openai

        stop = stop or _Stop()
        client = self.client()
        rng = random.Random(f"backoff-{index}-{request.get('seed')}")  # seeded jitter per request
        for attempt in range(self.max_retries + 1):
            if stop.stopped(index):
                raise TeacherError(f"task {index}: not sent: {stop.why()}")
            self._wait_pause(stop, index)
            self._count("requests")
            retry_after = None
            try:
                return client.chat.completions.create(**request)
            except openai.APIStatusError as err:
                # a server may echo the request, Authorization header included
                detail = redact(err.response.text or "", self._known_key())[:200]
                if err.status_code not in RETRY_STATUS:
                    raise TeacherError(
                        f"task {index}: HTTP {err.status_code} from {self.base_url}: {detail!r}"
                    ) from None
                retry_after = _retry_after(err.response.headers)
                if err.status_code == 429:
                    self._count("rate_limited")
                problem = f"HTTP {err.status_code}"
            except openai.APIConnectionError as err:  # refused, reset, timeout (a subclass)
                cause = err.__cause__ or err
                problem = f"{type(err).__name__}: {type(cause).__name__}: {cause}"
            except openai.APIResponseValidationError as err:  # a 200 that is no chat completion
                problem = f"{type(err).__name__}: {err}"
            if attempt == self.max_retries:
                raise TeacherError(
                    f"task {index}: gave up after {attempt + 1} attempts, last error {problem}"
                )
            cap = min(self.backoff_max_s, self.backoff_base_s * 2**attempt)
            if retry_after is not None:
                delay = min(retry_after, self.backoff_max_s)
                self._pause(delay)
            else:
                delay = cap / 2 + rng.uniform(0, cap / 2)
            self._count("retries")
            log.warning(
                "task %d: %s, retry %d/%d in %.2fs",
                index,
                problem,
                attempt + 1,
                self.max_retries,
                delay,
            )
            if stop.sleep(delay, index):
                raise TeacherError(f"task {index}: not retried after {problem}: {stop.why()}")
        raise AssertionError("unreachable")

    def _count(self, what: str) -> None:
        with self._pause_lock:
            self.stats[what] += 1

    def _api_key(self) -> str:
        key = os.environ.get(self.api_key_env or "")
        if not key:
            raise TeacherError(
                f"environment variable {self.api_key_env} (data.teacher.api_key_env) is not set: export the"
                " API key there, or set data.teacher.api_key_env=null for a server without auth (local vLLM)"
            )
        return key

    def _pause(self, seconds: float) -> None:
        with self._pause_lock:
            self._pause_until = max(self._pause_until, time.monotonic() + seconds)

    def _known_key(self) -> str | None:
        return os.environ.get(self.api_key_env) if self.api_key_env else None

    def _wait_pause(self, stop: _Stop | None = None, index: int = 0) -> None:
        while (left := self._pause_until - time.monotonic()) > 0:
            if stop is not None and stop.sleep(min(left, 1.0), index):
                raise TeacherError(f"task {index}: not sent: {stop.why()}")
            if stop is None:
                time.sleep(min(left, 1.0))


class _Stop:
    """Which tasks of one ``generate`` call may still retry. Once a task has given up, the tasks
    after it stop at their next retry (the data stops at the first failed task anyway); once the
    caller stops reading (an error, or it has enough), all of them do. Without it, every
    look-ahead request ran its whole retry schedule first (minutes for a refused connection)."""

    def __init__(self) -> None:
        self.first_failed: float = math.inf
        self._cond = threading.Condition()

    def fail(self, index: int) -> None:
        with self._cond:
            self.first_failed = min(self.first_failed, index)
            self._cond.notify_all()

    def stopped(self, index: int) -> bool:
        return self.first_failed < index

    def why(self) -> str:
        if self.first_failed < 0:
            return "the generation was stopped"
        return f"task {self.first_failed} failed first"

    def sleep(self, seconds: float, index: int) -> bool:
        """Wait ``seconds`` unless told to stop first; True when stopped."""
        with self._cond:
            return self._cond.wait_for(lambda: self.stopped(index), timeout=max(0.0, seconds))


# What a credential looks like in a server's reply; the match keeps its label (group 1) only.
_SECRET_PATTERNS = (
    # Authorization: Bearer sk-...  /  "authorization": "Bearer ..."  /  api_key=...
    re.compile(
        r"(?i)((?:authorization|api[_-]?key|x-api-key)[\"']?\s*[:=]\s*[\"']?(?:bearer\s+)?)"
        r"[^\s\"',}]+"
    ),
    re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+"),
    re.compile(r"()\bsk-[A-Za-z0-9_-]{8,}"),
)


def redact(text: str, *secrets: str | None) -> str:
    """``text`` with the given secrets and anything shaped like a credential (an Authorization
    header, a bearer token, an ``sk-`` key) replaced by ``***``: server replies go into logs and
    failed.json."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    for pattern in _SECRET_PATTERNS:
        text = pattern.sub(lambda m: m.group(1) + "***", text)
    return text


def _retry_after(headers) -> float | None:
    """Seconds to wait from ``retry-after-ms`` (OpenAI), ``Retry-After`` seconds or HTTP date."""
    if headers is None:
        return None
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    value = headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


# -----------------------------------------------------------------------------
# config -> teacher


def _params(fn: Callable, drop: tuple[str, ...] = ()) -> tuple[str, ...]:
    return tuple(p for p in inspect.signature(fn).parameters if p not in ("self", *drop))


# Valid config keys = the constructors' parameters, so the two cannot drift apart.
_VALID = {
    "procedural": ("name", *_params(ProceduralTeacher.__init__)),
    "hf": (
        "name",
        "model_path",
        "dtype",
        "device",
        "attn_implementation",
        *_params(HFTeacher.__init__, drop=("model", "tokenizer", "model_id", "loader")),
    ),
    "openai": ("name", *_params(OpenAITeacher.__init__)),
}


def _check_base_url(base_url: Any) -> None:
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://[^/?#\s]*@", str(base_url)):  # never repeat it
        raise ValueError(
            "data.teacher.base_url holds credentials (user:password@host): give the URL without"
            " credentials; the key goes in the environment variable named by data.teacher.api_key_env"
        )
    if not re.match(r"^https?://[^/@\s]+(/.*)?$", str(base_url)):
        raise ValueError(
            f"data.teacher.base_url={base_url!r} is not valid: expected http(s)://host[:port]/path"
        )


def check_config(cfg: dict) -> str:
    """Validate a teacher config without building anything (no model load, no env lookup)."""
    name = cfg.get("name")
    if name not in NAMES:
        raise ValueError(
            f"data.teacher.name={name!r} is not valid: expected one of {', '.join(NAMES)}"
        )
    _check_keys(cfg, _VALID[name], "data.teacher")
    if "base_url" in cfg:
        _check_base_url(cfg["base_url"])
    if "mode" in cfg:
        _mode(cfg["mode"])
    return name


def make_teacher(cfg: dict) -> Teacher:
    """Build the teacher of a ``data.teacher`` config (loads the model for hf)."""
    name = check_config(cfg)
    kwargs = {k: v for k, v in cfg.items() if k != "name"}
    if name == "procedural":
        return ProceduralTeacher(**kwargs)
    if name == "hf":
        return HFTeacher.from_config(kwargs)
    return OpenAITeacher(**kwargs)


def public_config(cfg: dict) -> dict:
    """The config as it may be written to provenance/logs (it holds no secret by construction;
    this drops anything that looks like one, as a second line of defence)."""
    return {
        k: v
        for k, v in cfg.items()
        if not re.search(r"key$|token|secret|password", k) or k == "api_key_env"
    }
