"""The content-addressed dataset cache: same bytes twice, one build across processes, resumable."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from eightfold.data import cache


def _records(n: int, start: int = 0) -> list[dict]:
    return [{"i": i, "text": f"step {i}\u2028x", "tuple": (i, i + 1)} for i in range(start, n)]


def test_second_call_returns_same_bytes_without_building(tmp_path: Path):
    calls = []

    def build():
        calls.append(1)
        return _records(5)

    key = {"source": "procedural", "seed": 0, "teacher": {"name": "procedural", "error_rate": 0.1}}
    first = cache.load_or_build(tmp_path, "teacher", key, build, meta={"template": "{question}"})
    entry = cache.entry(tmp_path, "teacher", key)
    raw = entry.path.read_bytes()
    second = cache.load_or_build(tmp_path, "teacher", key, lambda: pytest.fail("built twice"))
    assert first == second and len(calls) == 1
    assert entry.path.read_bytes() == raw
    assert first[0] == {
        "i": 0,
        "text": "step 0\u2028x",
        "tuple": [0, 1],
    }  # what any reader gets back
    meta = cache.read_meta(tmp_path, "teacher", key)
    assert meta["hash"] == cache.key_hash(key) == entry.path.stem
    assert meta["key"] == key and meta["count"] == 5 and meta["complete"]
    assert meta["provenance"]["template"] == "{question}" and "host" in meta["provenance"]


def test_key_is_canonical_and_namespace_checked(tmp_path: Path):
    assert cache.key_hash({"a": 1, "b": [1, 2]}) == cache.key_hash({"b": [1, 2], "a": 1})
    assert cache.key_hash({"a": 1}) != cache.key_hash({"a": 1.5})
    with pytest.raises(ValueError, match="namespace '../x' must match"):
        cache.load_or_build(tmp_path, "../x", {}, list)
    with pytest.raises(ValueError):  # NaN has no canonical JSON
        cache.key_hash({"a": float("nan")})


def test_failed_build_publishes_nothing(tmp_path: Path):
    def bad():
        yield {"i": 0}
        raise RuntimeError("teacher died")

    with pytest.raises(RuntimeError, match="teacher died"):
        cache.load_or_build(tmp_path, "ns", {"k": 1}, bad)
    assert not cache.entry(tmp_path, "ns", {"k": 1}).path.exists()
    assert cache.load_or_build(tmp_path, "ns", {"k": 1}, lambda: _records(2)) == json.loads(
        json.dumps(_records(2))
    )


_WORKER = textwrap.dedent(
    """
    import json, os, sys, time
    from pathlib import Path
    from eightfold.data import cache

    root, counter, mode = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]

    def build():
        with open(counter, "a") as f:      # one line per build, from any process
            f.write(f"{os.getpid()}\\n")
        time.sleep(0.8)                    # long enough for the other process to arrive
        return [{"i": i} for i in range(100)]

    def build_from(start):
        for i in range(start, 10):
            if mode == "kill" and i == 5:
                os.kill(os.getpid(), 9)    # SIGKILL: no cleanup, no flush beyond what was written
            yield {"i": i}

    if mode == "build":
        out = cache.load_or_build(root, "ns", {"dataset": "x"}, build)
    else:
        out = cache.load_resumable(root, "ns", {"dataset": "stream"}, build_from)
    print(json.dumps(out))
    """
)


def _spawn(tmp_path: Path, mode: str) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            "-c",
            _WORKER,
            str(tmp_path / "cache"),
            str(tmp_path / "builds.txt"),
            mode,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_two_processes_build_once_and_read_whole_files(tmp_path: Path):
    procs = [_spawn(tmp_path, "build") for _ in range(2)]
    outs = [p.communicate(timeout=60) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1] for o in outs]
    results = [json.loads(o[0]) for o in outs]
    assert results[0] == results[1] == [{"i": i} for i in range(100)]  # nobody saw half a file
    assert len((tmp_path / "builds.txt").read_text().split()) == 1  # built exactly once


def test_killed_generation_resumes_from_its_records(tmp_path: Path):
    proc = _spawn(tmp_path, "kill")
    proc.communicate(timeout=60)
    assert proc.returncode == -9
    e = cache.entry(tmp_path / "cache", "ns", {"dataset": "stream"})
    assert not e.path.exists()  # the final file appears only when complete
    assert [json.loads(x) for x in e.partial_path.read_text().splitlines()] == [
        {"i": i} for i in range(5)
    ]
    with open(e.partial_path, "ab") as f:
        f.write(b'{"i": 5, "half a reco')  # a torn last line, as a kill mid-write leaves

    starts = []

    def build_from(start):
        starts.append(start)
        return ({"i": i} for i in range(start, 10))

    out = cache.load_resumable(tmp_path / "cache", "ns", {"dataset": "stream"}, build_from)
    assert starts == [5]  # the 5 records already written were kept, not regenerated
    assert out == [{"i": i} for i in range(10)]
    assert (
        not e.partial_path.exists()
        and cache.read_meta(tmp_path / "cache", "ns", {"dataset": "stream"})["complete"]
    )


def test_prefix_grows_one_stream(tmp_path: Path):
    starts = []

    def build_from(start):
        starts.append(start)
        return iter(_records(12, start))  # a finite stream of 12

    key = {"dataset": "stream", "seed": 0}  # no size in the key
    small = cache.load_prefix(tmp_path, "ns", key, 4, build_from)
    big = cache.load_prefix(tmp_path, "ns", key, 8, build_from)
    assert big[:4] == small and len(big) == 8 and starts == [0, 4]
    assert cache.load_prefix(tmp_path, "ns", key, 3, build_from) == small[:3] and starts == [0, 4]
    everything = cache.load_prefix(tmp_path, "ns", key, 50, build_from)  # asks past the end
    assert len(everything) == 12 and starts == [0, 4, 8]
    assert cache.load_prefix(tmp_path, "ns", key, 50, build_from) == everything and starts == [
        0,
        4,
        8,
    ]
    assert cache.read_meta(tmp_path, "ns", key)["complete"]
