"""Teachers: procedural (injected errors at known steps), hf (a tiny local model), openai (the
official ``openai`` client).

The openai teacher is tested against FakeChatAPI, a small HTTP server started by the test on
127.0.0.1 that speaks the OpenAI /v1/chat/completions wire format. It is the one stand-in in these
tests, because a paid API (OpenAI, Gemini through a proxy, a hosted vLLM) cannot run here: no
network, no key, no cost. The client, the retries and the threads under test are the real ones,
and the server can be told to rate-limit, fail, stall past the timeout, or die halfway through a
generation.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from eightfold.data.arithmetic import first_wrong_step, generate_problems
from eightfold.data.seeds import load_seed_file
from eightfold.data.synthetic import STREAM_NS, synthetic_dataset
from eightfold.data.teachers import (
    ANSWER_FORMATS,
    HFTeacher,
    ProceduralTeacher,
    Task,
    TeacherError,
    _retry_after,
    make_teacher,
    public_config,
)
from eightfold.models import fingerprint_model, tiny_gpt
from eightfold.verify import is_correct, split_steps
from tests.helpers import REPO, run_cli

DATA = Path(__file__).parent / "data"
TASK = {"chains": 2, "steps": 2, "modulus": 7}

# -----------------------------------------------------------------------------
# procedural


def test_procedural_teacher_injects_known_errors():
    problems = generate_problems(400, 5, **TASK)
    teacher = ProceduralTeacher(error_rate=0.25, spurious_rate=0.25)
    tasks = [Task(i, p.prompt, p.prompt, p) for i, p in enumerate(problems)]
    samples = [s[0] for s in teacher.generate(tasks, seed=5)]
    kinds = Counter(s["injected"].split(":")[0] for s in samples)
    assert all(
        abs(kinds[k] / 400 - rate) < 0.08
        for k, rate in [("clean", 0.5), ("wrong", 0.25), ("spurious", 0.25)]
    )
    assert {s["injected"] for s in samples} >= {"spurious:wrong_value", "spurious:extra_step"}
    for p, s in zip(problems, samples, strict=True):
        right = is_correct(s["text"], str(p.answer), "procedural")
        fws = first_wrong_step(p, s["text"])
        assert right == (s["injected"] != "wrong")  # a wrong step always reaches a wrong answer
        assert fws == s["injected_step"]  # the exact first wrong step is the injected one
        assert len(split_steps(s["text"])) == len(split_steps(p.solution())) + (
            s["injected"] == "spurious:extra_step"
        )


def test_procedural_teacher_is_per_problem_deterministic():
    problems = generate_problems(20, 1, **TASK)
    teacher = ProceduralTeacher(error_rate=0.3, spurious_rate=0.3)
    tasks = [Task(i, p.prompt, p.prompt, p) for i, p in enumerate(problems)]
    whole = list(teacher.generate(tasks, seed=1))
    assert (
        list(teacher.generate(tasks[7:], seed=1)) == whole[7:]
    )  # a resumed stream is the same stream
    clean = [s[0]["text"] for s in ProceduralTeacher().generate(tasks, seed=1)]
    assert clean == [p.solution(random.Random(f"teacher-1-{i}")) for i, p in enumerate(problems)]


@pytest.mark.parametrize(
    "cfg, message",
    [
        ({"name": "procedural", "error_rate": 0.7, "spurious_rate": 0.5}, "sum must be <= 1"),
        ({"name": "procedural", "error_rate": 2}, "error_rate=2 is not valid"),
        (
            {"name": "procedural", "spurious_kinds": ["typo"]},
            "spurious_kinds=['typo'] is not valid",
        ),
        ({"name": "procedural", "temperature": 1}, "unknown keys ['temperature']"),
        ({"name": "gpt"}, "data.teacher.name='gpt' is not valid"),
        ({"name": "openai", "model": "m", "api_key": "sk-x"}, "api_key is not allowed"),
        ({"name": "hf", "model_path": "/nonexistent"}, "model_path='/nonexistent' is not valid"),
        (
            {"name": "openai", "model": "m", "base_url": "https://u:p@host/v1"},
            "without credentials",
        ),
    ],
)
def test_bad_teacher_configs_name_the_value(cfg, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("(", r"\(")):
        make_teacher(cfg)


# -----------------------------------------------------------------------------
# hf: a tiny GPT (no hub) fitted in a second to answer "#3" to everything


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    # Tiny matmuls on a shared 2-core machine: one thread is ~100x faster than two that spin.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def answers_three():
    model, tok = tiny_gpt(n_layer=1, n_embd=32, n_head=2, n_positions=64, seed=0)
    from eightfold.generation import encode_prompt, encode_response

    prompts = [p.prompt for p in generate_problems(16, 9, chains=2, steps=1, modulus=7)]
    rows = [encode_prompt(tok, p) + encode_response(tok, "#3") for p in prompts]
    ids = torch.tensor(rows)
    labels = ids.clone()
    labels[:, : len(rows[0]) - 3] = -100  # loss on "#3<eos>" only
    opt = torch.optim.Adam(model.parameters(), lr=3e-2)
    for _ in range(60):
        loss = model(input_ids=ids, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    return model, tok


def test_hf_teacher_samples_batched_and_seeded(answers_three):
    model, tok = answers_three
    teacher = HFTeacher(
        model,
        tok,
        fingerprint_model(model),
        temperature=1.0,
        samples=3,
        max_new_tokens=8,
        batch_size=4,
    )
    problems = generate_problems(6, 2, chains=2, steps=1, modulus=7)
    tasks = [Task(i, p.prompt, p.prompt, p) for i, p in enumerate(problems)]
    out = list(teacher.generate(tasks, seed=11))
    assert len(out) == 6 and all(len(s) == 3 for s in out)
    assert Counter(s["text"] for samples in out for s in samples).most_common(1)[0][0] == "#3"
    assert out == list(teacher.generate(tasks, seed=11))  # seeded: same call, same samples
    assert teacher.key()["model"] == fingerprint_model(model) and teacher.key()["samples"] == 3


def test_hf_teacher_builds_a_valid_dataset(answers_three, tmp_path):
    model, tok = answers_three
    cfg = {"name": "hf", "temperature": 0.0, "max_new_tokens": 8, "batch_size": 4}

    def factory():
        return HFTeacher(
            model, tok, fingerprint_model(model), **{k: v for k, v in cfg.items() if k != "name"}
        )

    task = {"chains": 2, "steps": 1, "modulus": 7}
    common = dict(
        kind="procedural",
        seed=0,
        teacher=cfg,
        task=task,
        cache_dir=str(tmp_path),
        teacher_factory=factory,
    )
    noisy, info = synthetic_dataset(
        size=10, label="teacher", **common
    )  # the teacher's answer is the label
    assert len(noisy) == 10 and all(r["answer"] == "3" and r["solution"] == "#3" for r in noisy)
    assert info["label_noise"] > 0.5  # most problems' true answer is not 3: measured, not hidden
    clean, info = synthetic_dataset(size=3, label="reference", **common)  # verified positives only
    assert [r["reference"] for r in clean] == ["3"] * 3 and info["problems_read"] > 3
    assert all(
        r["verdict"] == "spurious" and r["first_wrong_step"] == 0 for r in clean
    )  # right answer, no steps


# -----------------------------------------------------------------------------
# openai-compatible HTTP


class FakeChatAPI:
    """Stands in for a paid API: /v1/chat/completions on 127.0.0.1, in a thread of the test.

    ``reply(prompt) -> str`` writes the answer; ``fail(prompt, n) -> (status, headers) | None``
    can turn the n-th request for a prompt into an error. Every request is recorded.
    """

    def __init__(self, reply: Callable[[str], str], key: str | None = "sk-test-secret"):
        self.reply, self.key = reply, key
        self.fail: Callable[[str, int], tuple[int, dict] | None] = lambda prompt, n: None
        self.delay: Callable[[str, int], float] = lambda prompt, n: 0.0  # seconds before replying
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                prompt = body["messages"][-1]["content"]
                with api.lock:
                    n = sum(r["prompt"] == prompt for r in api.requests)
                    api.requests.append(
                        {"prompt": prompt, "auth": self.headers.get("Authorization"), "body": body}
                    )
                if self.path != "/v1/chat/completions":
                    return self._send(404, {"error": "no such route"})
                if api.key and self.headers.get("Authorization") != f"Bearer {api.key}":
                    return self._send(401, {"error": {"message": "invalid api key"}})
                time.sleep(api.delay(prompt, n))
                failure = api.fail(prompt, n)
                if failure:
                    return self._send(
                        failure[0], {"error": {"message": "scripted failure"}}, failure[1]
                    )
                time.sleep(random.random() * 0.01)  # finish out of order
                choices = [
                    {
                        "index": i,
                        "message": {"role": "assistant", "content": api.reply(prompt)},
                        "finish_reason": "stop",
                    }
                    for i in range(body.get("n", 1))
                ]
                self._send(
                    200,
                    {
                        "id": "x",
                        "object": "chat.completion",
                        "model": body["model"],
                        "choices": choices,
                    },
                )

            def _send(self, status, obj, headers=None):
                data = json.dumps(obj).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for k, v in (headers or {}).items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client timed out and left
                    pass

            def log_message(self, *args):  # keep test output clean
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        ).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


GSM = {s.question: s.solution for s in load_seed_file(DATA / "gsm8k_train.jsonl", "gsm8k")}


@pytest.fixture
def api(monkeypatch):
    monkeypatch.setenv("EIGHTFOLD_TEST_KEY", "sk-test-secret")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    server = FakeChatAPI(lambda prompt: GSM.get(prompt, "no idea"))
    yield server
    server.close()


def _openai_cfg(api: FakeChatAPI, **kw) -> dict:
    return {
        "name": "openai",
        "model": "fake-gpt",
        "base_url": api.url,
        "api_key_env": "EIGHTFOLD_TEST_KEY",
        "mode": "solve",
        "prompt_template": "{question}",
        "concurrency": 3,
        "max_retries": 3,
        "backoff_base_s": 0.01,
        "backoff_max_s": 0.05,
        "timeout_s": 10.0,
        **kw,
    }


def test_openai_teacher_ordered_concurrent_and_keeps_key_secret(api, caplog):
    teacher = make_teacher(_openai_cfg(api, samples=2))
    seeds = load_seed_file(DATA / "gsm8k_train.jsonl", "gsm8k")
    tasks = [Task(i, s.question, s.question) for i, s in enumerate(seeds)]
    with caplog.at_level(logging.DEBUG):
        out = list(teacher.generate(tasks, seed=0))
    assert [o[0]["text"] for o in out] == [
        s.solution for s in seeds
    ]  # in task order despite concurrency
    assert all(len(o) == 2 for o in out)
    assert {r["auth"] for r in api.requests} == {"Bearer sk-test-secret"}
    assert (
        len({r["body"]["seed"] for r in api.requests}) == 6
    )  # one seed per task, derived from its index
    secret_free = (
        repr(teacher)
        + json.dumps(teacher.key())
        + json.dumps(public_config(_openai_cfg(api)))
        + caplog.text
    )
    assert "sk-test-secret" not in secret_free


def test_openai_teacher_retries_rate_limits_and_server_errors(api):
    first = next(iter(GSM))
    script = {0: (429, {"Retry-After": "0.05"}), 1: (503, {}), 2: (429, {"retry-after-ms": "10"})}
    api.fail = lambda prompt, n: script.get(n) if prompt == first else None
    teacher = make_teacher(_openai_cfg(api))
    t0 = time.monotonic()
    out = list(teacher.generate([Task(0, first, first)], seed=0))
    assert out[0][0]["text"] == GSM[first] and len(api.requests) == 4
    assert time.monotonic() - t0 >= 0.05  # Retry-After was honoured
    assert teacher.stats["rate_limited"] == 2 and teacher.stats["retries"] == 3


def test_openai_teacher_gives_up_with_a_clear_error(api, monkeypatch):
    api.fail = lambda prompt, n: (400, {})
    with pytest.raises(TeacherError, match="HTTP 400"):
        list(make_teacher(_openai_cfg(api)).generate([Task(0, "q", "q")], seed=0))
    assert len(api.requests) == 1  # a bad request is not retried
    api.fail = lambda prompt, n: (500, {})
    with pytest.raises(TeacherError, match="gave up after 4 attempts"):
        list(make_teacher(_openai_cfg(api)).generate([Task(0, "q", "q")], seed=0))
    monkeypatch.delenv("EIGHTFOLD_TEST_KEY")
    with pytest.raises(TeacherError, match="EIGHTFOLD_TEST_KEY .* is not set"):
        list(make_teacher(_openai_cfg(api)).generate([Task(0, "q", "q")], seed=0))


def test_openai_teacher_retries_a_500_then_succeeds(api):
    first = next(iter(GSM))
    api.fail = lambda prompt, n: (500, {}) if n == 0 else None
    teacher = make_teacher(_openai_cfg(api))
    out = list(teacher.generate([Task(0, first, first)], seed=0))
    assert out[0][0]["text"] == GSM[first] and len(api.requests) == 2
    assert teacher.stats == {"requests": 2, "retries": 1, "rate_limited": 0}


def test_openai_teacher_retry_after_is_capped_by_backoff_max(api):
    first = next(iter(GSM))
    api.fail = lambda prompt, n: (429, {"Retry-After": "3600"}) if n == 0 else None
    t0 = time.monotonic()
    out = list(make_teacher(_openai_cfg(api)).generate([Task(0, first, first)], seed=0))
    assert out[0][0]["text"] == GSM[first]
    assert time.monotonic() - t0 < 5  # an hour asked, backoff_max_s=0.05 waited


def test_openai_teacher_times_out_a_stalled_request_and_retries(api):
    first = next(iter(GSM))
    api.delay = lambda prompt, n: 3.0 if n == 0 else 0.0  # the first answer comes too late
    teacher = make_teacher(_openai_cfg(api, timeout_s=0.5))
    t0 = time.monotonic()
    out = list(teacher.generate([Task(0, first, first)], seed=0))
    assert out[0][0]["text"] == GSM[first] and teacher.stats["retries"] == 1
    assert time.monotonic() - t0 < 2.5  # it did not wait for the stalled reply
    api.delay = lambda prompt, n: 3.0
    with pytest.raises(TeacherError, match=r"gave up after 2 attempts, .*Timeout"):
        list(
            make_teacher(_openai_cfg(api, timeout_s=0.3, max_retries=1)).generate(
                [Task(1, "q", "q")], seed=0
            )
        )


def test_openai_teacher_refused_connection_is_retried_then_reported(api):
    import socket

    with socket.socket() as sock:  # a port that nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cfg = {**_openai_cfg(api, max_retries=2), "base_url": f"http://127.0.0.1:{port}/v1"}
    teacher = make_teacher(cfg)
    with pytest.raises(
        TeacherError, match=r"task 0: gave up after 3 attempts, last error APIConnectionError"
    ):
        list(teacher.generate([Task(0, "q", "q")], seed=0))
    assert teacher.stats["requests"] == 3 and teacher.stats["retries"] == 2


def test_openai_teacher_without_auth_never_sends_the_environment_key(monkeypatch):
    server = FakeChatAPI(lambda prompt: "#### 1", key=None)
    try:
        monkeypatch.setenv("OPENAI_API_KEY", "sk-must-not-leave")  # the client's own default
        monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
        teacher = make_teacher({**_openai_cfg(server), "api_key_env": None})
        assert list(teacher.generate([Task(0, "q", "q")], seed=0)) == [
            [{"text": "#### 1", "finish_reason": "stop"}]
        ]
        assert "sk-must-not-leave" not in str(server.requests)
    finally:
        server.close()


def test_a_run_with_the_openai_teacher_never_writes_the_key(api, tmp_path):
    """The whole app (a subprocess, Hydra's logs included) generates D_syn from the server, trains
    and evaluates; then every file under paths.root is searched for the key."""
    proc = run_cli(
        [
            "eightfold.train",
            "experiment=smoke",
            "data=teacher",
            "data.source=gsm8k_teacher",
            "data.kind=gsm8k",
            f"data.train_file={DATA / 'gsm8k_train.jsonl'}",
            f"data.test_file={DATA / 'gsm8k_test.jsonl'}",
            "data.size=6",
            "data.test_size=2",
            "data.max_new_tokens=4",
            "model.n_positions=1024",
            "trainer.max_steps=2",
            "teacher@data.teacher=openai",
            f"data.teacher.base_url={api.url}",
            "data.teacher.model=fake-gpt",
            "data.teacher.api_key_env=EIGHTFOLD_TEST_KEY",
            "data.teacher.mode=solve",
            "data.teacher.prompt_template='{question}'",
            "logger=many",
            f"paths.root={tmp_path}",
        ],
        cwd=REPO,
        env={"EIGHTFOLD_TEST_KEY": "sk-test-secret", "NO_PROXY": "127.0.0.1,localhost"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(api.requests) == 6 and {r["auth"] for r in api.requests} == {"Bearer sk-test-secret"}
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.name == "result.json" for p in files) and len(files) > 10
    assert [str(p) for p in files if b"sk-test-secret" in p.read_bytes()] == []
    assert "sk-test-secret" not in proc.stdout + proc.stderr


def test_retry_after_forms():
    assert _retry_after({"Retry-After": "2"}) == 2.0
    assert _retry_after({"retry-after-ms": "250"}) == 0.25
    assert (
        _retry_after({"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0
    )  # a date in the past
    assert _retry_after({}) is None


def test_openai_generation_survives_a_crash_and_resumes(api, tmp_path):
    """The API dies at problem 4 of 6: the first 3 are kept; the rerun asks only for the rest."""
    seeds = load_seed_file(DATA / "gsm8k_train.jsonl", "gsm8k")
    order = [r["question"] for r in _stream_order(tmp_path)]
    dying = set(order[3:])
    api.fail = lambda prompt, n: (400, {}) if prompt in dying else None
    kwargs = dict(
        kind="gsm8k",
        size=6,
        seed=0,
        teacher=_openai_cfg(api, concurrency=1),
        train_file=str(DATA / "gsm8k_train.jsonl"),
        cache_dir=str(tmp_path / "cache"),
    )
    with pytest.raises(TeacherError):
        synthetic_dataset(**kwargs)
    entry = next((tmp_path / "cache" / STREAM_NS).glob("*.partial.jsonl"))
    kept = [json.loads(x) for x in entry.read_text().splitlines()]
    assert [r["question"] for r in kept] == order[:3]

    api.fail = lambda prompt, n: None
    before = len(api.requests)
    records, info = synthetic_dataset(**kwargs)
    assert sorted(r["prompt"] for r in api.requests[before:]) == sorted(
        order[3:]
    )  # only the missing ones
    assert [r["question"] for r in records] == order and info["example_verdicts"] == {"correct": 6}
    assert {r["solution"] for r in records} == {s.solution for s in seeds}
    meta = json.loads(next((tmp_path / "cache" / STREAM_NS).glob("*.meta.json")).read_text())
    assert meta["provenance"]["teacher_config"]["api_key_env"] == "EIGHTFOLD_TEST_KEY"
    assert "sk-test-secret" not in json.dumps(meta)


def _stream_order(tmp_path: Path) -> list[dict]:
    """The seed order of the gsm8k_train fixture stream (seed 0), via the procedural-free echo path."""
    from eightfold.data.synthetic import SeedStream

    stream = SeedStream("gsm8k", 0, train_file=str(DATA / "gsm8k_train.jsonl"))
    return [{"question": s.question} for _, s in stream.from_index(0)]


def test_openai_rewrite_mode_makes_new_problems(api, tmp_path):
    api.reply = lambda prompt: "Problem: **A new one.** What is 2+2?\nSolution: 2 + 2 = 4.\n#### 4"
    cfg = _openai_cfg(
        api, mode="rewrite", prompt_template="Seed: {question}\n{solution}\n{answer_format}"
    )
    records, info = synthetic_dataset(
        kind="gsm8k",
        size=9,
        seed=0,
        teacher=cfg,
        label="teacher",
        train_file=str(DATA / "gsm8k_train.jsonl"),
        cache_dir=str(tmp_path),
    )
    assert len(records) == 9 and info["problems_read"] == 9  # 6 seeds, cycled
    assert records[0]["question"] == "A new one. What is 2+2?" and records[0]["answer"] == "4"
    prompt = api.requests[0]["prompt"]
    assert ANSWER_FORMATS["gsm8k"] in prompt and any(
        s in prompt for s in GSM.values()
    )  # seed solution shown
