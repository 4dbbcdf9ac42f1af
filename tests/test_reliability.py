"""Issue 17: bad roots, seeds, grids and secrets are refused in one line before any work (exit 2,
no traceback, nothing written); damaged run files are reported or repaired, not tripped over;
files respect the umask; two sweeps of one file cooperate. Real processes and files throughout.
(The kill-and-resume equality is tests/test_resume.py.)"""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from analysis.cli import main as analyze
from eightfold.config import ConfigError
from eightfold.data.teachers import Task, TeacherError, make_teacher
from eightfold.rundir import run_dir
from eightfold.runfiles import (
    FAILED_STATUS,
    FINISHED,
    PENDING,
    CorruptResult,
    read_result,
    run_status,
    write_atomic,
)
from eightfold.sweep import SweepError, load_sweep
from eightfold.sweep import main as sweep_main
from eightfold.train import ensure_sft_model, run
from eightfold.validate import validate_config
from tests.helpers import REPO, compose_cfg, run_cli

QUIET = "trainer.enable_progress_bar=false"
KEY = "sk-issue17-do-not-leak-0123456789"
DATA = REPO / "tests" / "data"


def lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def files_under(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


# ----------------------------------------------------------------------------- roots
def _read_only(path: Path) -> Path:
    """A directory this process cannot write to, also as root (who ignores permission bits):
    then it is made immutable."""
    path.mkdir()
    path.chmod(0o555)
    if os.geteuid() == 0:
        done = subprocess.run(["chattr", "+i", str(path)], capture_output=True)
        if done.returncode != 0:
            pytest.skip("running as root without chattr: no directory is read-only to us")
    return path


@pytest.fixture(params=["a_file", "under_a_file", "read_only"])
def bad_root(request, tmp_path):
    """(root, what the one-line error says about it)."""
    if request.param == "a_file":
        (tmp_path / "root").write_text("not a directory\n")
        yield tmp_path / "root", "is a file, not a directory"
    elif request.param == "under_a_file":
        (tmp_path / "file").write_text("x\n")
        yield tmp_path / "file" / "root", "is a file, not a directory"
    else:
        ro = _read_only(tmp_path / "ro")
        yield ro / "root", "is not writable"
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(ro)], check=False)
        ro.chmod(0o755)


def _one_error_line(proc: subprocess.CompletedProcess, prefix: str, *words: str) -> None:
    out = lines(proc.stdout + proc.stderr)
    assert proc.returncode == 2, proc.stdout + proc.stderr[-3000:]
    assert len(out) == 1 and out[0].startswith(prefix), out
    assert "Traceback" not in out[0] and all(w in out[0] for w in words), out


def test_train_refuses_an_unwritable_or_file_root(bad_root, tmp_path):
    root, what = bad_root
    before = sorted(map(str, tmp_path.rglob("*")))
    proc = run_cli(["eightfold.train", "experiment=smoke", f"paths.root={root}"], cwd=tmp_path)
    _one_error_line(proc, "eightfold: error: paths.root=", str(root), what)
    assert sorted(map(str, tmp_path.rglob("*"))) == before  # nothing written anywhere


@pytest.mark.parametrize("dry_run", [True, False], ids=["dry_run", "run"])
def test_sweep_refuses_an_unwritable_or_file_root(bad_root, dry_run, tmp_path):
    root, what = bad_root
    sweep = tmp_path / "s.yaml"
    sweep.write_text(yaml.safe_dump({"overrides": ["experiment=smoke"], "grid": {"seed": [0]}}))
    args = [str(sweep), "--root", str(root), *(["--dry-run"] if dry_run else [])]
    proc = run_cli(["eightfold.sweep", *args], cwd=tmp_path)
    _one_error_line(proc, "eightfold-sweep: error: --root=", str(root), what)


def test_analyze_refuses_an_unwritable_or_file_out(bad_root, tmp_path, capsys):
    out, what = bad_root
    (tmp_path / "sweep" / "runs").mkdir(parents=True)
    assert analyze(["all", str(tmp_path / "sweep"), "--out", str(out)]) == 2
    err = lines(capsys.readouterr().err)
    assert (
        len(err) == 1 and err[0].startswith("eightfold-analyze: error: --out=") and what in err[0]
    )
    results = tmp_path / "results.csv"
    results.write_text("objective,n\n")
    assert analyze(["fit", str(results), "-o", str(out / "fits.json")]) == 2
    assert len(lines(capsys.readouterr().err)) == 1


# ----------------------------------------------------------------------------- secrets
@pytest.mark.parametrize(
    "args",
    [
        [
            "data=teacher",
            "teacher@data.teacher=openai",
            f"data.teacher.base_url=http://u:{KEY}@h/v1",
        ],
        ["data=teacher", "teacher@data.teacher=openai", f"+data.teacher.api_key={KEY}"],
        ["-m", "seed=0,1", f"+data.teacher.api_key={KEY}"],
    ],
    ids=["base_url", "api_key", "multirun"],
)
def test_a_key_on_the_command_line_is_refused_before_anything_is_written(args, tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    proc = run_cli(
        ["eightfold.train", "experiment=smoke", f"paths.root={root}", *args], cwd=tmp_path
    )
    _one_error_line(proc, "eightfold: error: data.teacher.", "environment variable")
    assert KEY not in proc.stdout + proc.stderr
    assert files_under(root) == [] and not (tmp_path / "outputs").exists()


def test_a_key_in_a_sweep_file_is_refused_before_anything_is_written(tmp_path, capsys):
    sweep = tmp_path / "s.yaml"
    overrides = ["experiment=smoke", f"data.teacher.base_url=http://user:{KEY}@h/v1"]
    sweep.write_text(yaml.safe_dump({"overrides": overrides, "grid": {"seed": [0, 1]}}))
    root = tmp_path / "root"
    assert sweep_main([str(sweep), "--root", str(root), "--dry-run"]) == 2
    err = capsys.readouterr()
    assert KEY not in err.out + err.err and "credentials" in err.err
    assert not root.exists()


class _EchoingServer:
    """A chat API that answers every request with HTTP 400 and a body that echoes the request's
    Authorization header back (some proxies do)."""

    def __init__(self) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                self.rfile.read(int(self.headers["Content-Length"]))
                body = json.dumps(
                    {
                        "error": {"message": "bad request"},
                        "request": {"headers": {"Authorization": self.headers["Authorization"]}},
                    }
                ).encode()
                self.send_response(400)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.slow
def test_a_server_error_that_echoes_the_key_is_redacted_in_failed_json(tmp_path):
    server = _EchoingServer()
    try:
        proc = run_cli(
            [
                "eightfold.train",
                "experiment=smoke",
                "data=teacher",
                "data.source=gsm8k_teacher",
                "data.kind=gsm8k",
                f"data.train_file={DATA / 'gsm8k_train.jsonl'}",
                f"data.test_file={DATA / 'gsm8k_test.jsonl'}",
                "data.size=2",
                "data.test_size=2",
                "model.n_positions=1024",
                "teacher@data.teacher=openai",
                f"data.teacher.base_url={server.url}",
                "data.teacher.model=fake-gpt",
                "data.teacher.api_key_env=EIGHTFOLD_TEST_KEY",
                "data.teacher.mode=solve",
                "data.teacher.prompt_template='{question}'",
                f"paths.root={tmp_path / 'root'}",
                QUIET,
            ],
            cwd=tmp_path,
            env={"EIGHTFOLD_TEST_KEY": KEY, "NO_PROXY": "127.0.0.1,localhost"},
        )
    finally:
        server.close()
    assert proc.returncode != 0
    (failed,) = (tmp_path / "root").rglob("failed.json")
    error = json.loads(failed.read_text())["error"]
    assert "HTTP 400" in error and "Bearer ***" in error  # the reply is there, the key is not
    assert [str(p) for p in files_under(tmp_path / "root") if KEY.encode() in p.read_bytes()] == []
    assert KEY not in proc.stdout + proc.stderr


def test_look_ahead_requests_stop_retrying_once_a_task_has_failed():
    with socket.socket() as sock:  # a port nothing listens on: every request is refused
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    concurrency, retries = 4, 3
    teacher = make_teacher(
        {
            "name": "openai",
            "model": "m",
            "base_url": f"http://127.0.0.1:{port}/v1",
            "api_key_env": None,
            "concurrency": concurrency,
            "max_retries": retries,
            "backoff_base_s": 0.1,
            "backoff_max_s": 0.2,
        }
    )
    with pytest.raises(TeacherError, match="task 0: gave up after 4 attempts"):
        list(teacher.generate([Task(i, "q", "q") for i in range(12)], seed=0))
    # only the requests in flight when the first task failed were made, each at most its own
    # schedule; before, the 2 x concurrency look-ahead tasks all ran their whole schedules
    assert teacher.stats["requests"] <= concurrency * (retries + 1)


# ----------------------------------------------------------------------------- config values
@pytest.mark.parametrize("seed", [-1, 2**32, 2**40])
def test_a_seed_out_of_range_is_invalid(seed, tmp_path):
    cfg = compose_cfg(["experiment=smoke", f"seed={seed}", f"paths.root={tmp_path}"])
    with pytest.raises(ConfigError, match=rf"seed={seed} is not valid: .*0 <= seed < 2\*\*32"):
        validate_config(cfg)
    validate_config(
        compose_cfg(["experiment=smoke", f"seed={2**32 - 1}", f"paths.root={tmp_path}"])
    )


def test_dry_run_lists_an_out_of_range_seed_as_invalid(tmp_path):
    sweep = tmp_path / "s.yaml"
    sweep.write_text(yaml.safe_dump({"overrides": ["experiment=smoke"], "grid": {"seed": [0, -1]}}))
    proc = run_cli(
        ["eightfold.sweep", str(sweep), "--root", str(tmp_path / "r"), "--dry-run"], cwd=tmp_path
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr[-2000:]
    assert "1 pending, 1 invalid" in proc.stdout and "seed=-1 is not valid" in proc.stdout


def test_a_huge_test_size_blames_test_size_with_a_valid_bound(tmp_path):
    cfg = compose_cfg(["experiment=smoke", "data.test_size=1000000000", f"paths.root={tmp_path}"])
    with pytest.raises(ConfigError) as err:
        validate_config(cfg)
    message = str(err.value)
    assert message.startswith("data.test_size=1000000000 is larger than the problem pool")
    bound = int(message.split("data.test_size<=")[1].split()[0])
    assert bound > 0 and "data.size<=-" not in message
    validate_config(
        compose_cfg(["experiment=smoke", f"data.test_size={bound}", f"paths.root={tmp_path}"])
    )


@pytest.mark.parametrize("grid", [{}, None], ids=["empty", "missing"])
def test_a_sweep_without_a_grid_is_refused(grid, tmp_path, capsys):
    spec = {"overrides": ["experiment=smoke"], **({} if grid is None else {"grid": grid})}
    sweep = tmp_path / "s.yaml"
    sweep.write_text(yaml.safe_dump(spec))
    with pytest.raises(SweepError, match="the grid is empty"):
        load_sweep(sweep)
    assert sweep_main([str(sweep), "--root", str(tmp_path / "r")]) == 2
    assert len(lines(capsys.readouterr().err)) == 1 and not (tmp_path / "r").exists()


# ----------------------------------------------------------------------------- run files
RESULT = {"objective": "sft", "test_accuracy": 0.5, "test_error": 0.5}


@pytest.mark.parametrize(
    "text, status",
    [
        ("[]", PENDING),
        ("{}", PENDING),
        ('{"objective": "sft"}', PENDING),
        (json.dumps(RESULT), FINISHED),
        (json.dumps(RESULT)[:20], FAILED_STATUS),  # truncated
        ("", FAILED_STATUS),
    ],
    ids=["list", "empty_dict", "no_result_keys", "result", "truncated", "empty_file"],
)
def test_result_json_that_is_no_result(text, status, tmp_path):
    (tmp_path / "result.json").write_text(text)
    got, error = run_status(tmp_path)
    assert got == status
    if status == FAILED_STATUS:
        assert "corrupt" in error and "not valid JSON" in error
        with pytest.raises(CorruptResult):
            read_result(tmp_path)
    else:
        assert (read_result(tmp_path) is not None) == (status == FINISHED)


def test_a_run_with_a_list_result_trains_and_a_truncated_one_is_reported(smoke_cfg, tmp_path):
    cfg = smoke_cfg("trainer.max_steps=5")
    directory = run_dir(cfg)
    directory.mkdir(parents=True)
    (directory / "result.json").write_text("[]")
    result = run(cfg)  # `[]` is no result: the run trains and writes one
    assert result["train_steps"] == 5 and read_result(directory)["train_steps"] == 5

    (directory / "result.json").write_text('{"objective": "sft", "test_acc')
    with pytest.raises(CorruptResult, match="corrupt"):
        run(cfg)
    assert (directory / "result.json").read_text() == '{"objective": "sft", "test_acc'
    args = [
        "eightfold.train",
        "experiment=smoke",
        "trainer.max_steps=5",
        f"paths.root={tmp_path}",
        QUIET,
    ]
    proc = run_cli(args, cwd=tmp_path)
    _one_error_line(proc, "eightfold: error: ", "result.json is corrupt")
    assert (directory / "result.json").read_text() == '{"objective": "sft", "test_acc'


def test_a_finished_sft_run_without_its_weights_is_trained_again(smoke_cfg):
    sft = smoke_cfg("trainer.max_steps=10")
    first = run(sft)
    directory = run_dir(sft)
    (directory / "model" / "model.safetensors").unlink()
    model = ensure_sft_model(smoke_cfg("trainer.max_steps=10", "objective=dpo"))
    assert (model / "model.safetensors").is_file()
    again = read_result(directory)
    assert again["resumed_from_step"] == 10  # from its last checkpoint: nothing retrained
    assert again["test_accuracy"] == first["test_accuracy"]
    assert again["final_train_loss"] == first["final_train_loss"]


def test_files_follow_the_umask_and_stray_temp_files_are_removed(smoke_cfg, tmp_path):
    cfg = smoke_cfg("trainer.max_steps=10")
    directory = run_dir(cfg)
    (directory / "checkpoints").mkdir(parents=True)
    stray = [directory / "checkpoints" / ".last.ckpt.x1y2.tmp", directory / ".result.json.ab.tmp"]
    for p in stray:
        p.write_bytes(b"half a file")
    (directory / ".model.4242.tmp").mkdir()  # a killed save_pretrained
    old = os.umask(0o002)
    try:
        run(cfg)
        written = write_atomic(tmp_path / "plain.txt", "x")
    finally:
        os.umask(old)
    for path in [
        written,
        directory / "result.json",
        directory / "config.yaml",
        directory / "checkpoints" / "last.ckpt",
        directory / "logs" / "metrics.csv",
    ]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o664, path  # group-readable and writable
    assert not any(p.exists() for p in stray) and not (directory / ".model.4242.tmp").exists()
    assert not list(tmp_path.rglob("*.tmp"))


# ----------------------------------------------------------------------------- two sweeps at once
@pytest.mark.slow
def test_two_sweeps_of_one_file_at_once_both_finish_every_run(tmp_path):
    sweep = tmp_path / "s.yaml"
    spec = {"overrides": ["experiment=smoke", QUIET, "trainer.max_steps=120"]}
    sweep.write_text(yaml.safe_dump({**spec, "grid": {"data.size": [32, 48, 64]}}))
    root = tmp_path / "root"
    env = {**os.environ, "HYDRA_FULL_ERROR": "0"}
    cmd = [sys.executable, "-m", "eightfold.sweep", str(sweep), "--root", str(root)]
    procs = []
    for _ in range(2):
        procs.append(
            subprocess.Popen(
                cmd,
                cwd=tmp_path,
                env=env,
                text=True,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
        )
        time.sleep(1.0)
    outs = [p.communicate(timeout=900) for p in procs]
    for p, (out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, out + err[-3000:]
        assert "did not finish" not in out + err
    results = sorted(root.glob("runs/*/result.json"))
    assert len(results) == 3
    # each run trained once, by one of the sweeps (the other waited for it and read its result)
    logs = "".join(p.read_text() for p in root.glob("multirun/*/*/*.log"))
    assert all(logs.count(f"run: {p.parent}\n") == 1 for p in results), logs[-3000:]
