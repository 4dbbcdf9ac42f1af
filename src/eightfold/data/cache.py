"""A content-addressed, build-once, crash-safe cache of JSONL datasets.

An entry is named by the sha256 of the canonical JSON of a *key* (everything that decides the
records: source, seed, teacher config, ...). Every run of a sweep that asks for the same key gets
the same file. Three rules make that safe under concurrency and crashes:

* one builder: the entry is built under a file lock, and the check "is it built?" is repeated
  after the lock is taken, so two processes that race build it once;
* no half files: the final ``<hash>.jsonl`` only ever appears or changes by ``os.replace``, so a
  reader sees the old complete file or the new complete file, never a torn one;
* resumable streams: long generations append to ``<hash>.partial.jsonl`` record by record; a
  killed build leaves its records there and the next call continues from that count.

Layout under ``<cache_dir>/<namespace>/``::

    <hash>.jsonl         the records, one canonical JSON object per line
    <hash>.meta.json     key, hash, count, complete, provenance (what built it, when, where)
    <hash>.partial.jsonl a stream being built or extended (absent when idle)
    <hash>.lock          the file lock

Streams (``load_prefix``) are keyed WITHOUT the size: the entry stores a growing prefix of one
stream and a request for n records returns its first n, extending it when it is shorter. So the
data of size n is literally the prefix of the data of size 2n, even for a teacher whose sampling is
not reproducible (an API), and a data-size sweep pays for one generation.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from filelock import FileLock

from eightfold.runfiles import remove_temp_files, write_atomic, write_json_atomic

FORMAT_VERSION = 1  # bump when the on-disk layout changes; it is part of every hash
_NAMESPACE = re.compile(r"^[A-Za-z0-9_.-]+$")


def canonical_json(obj: Any) -> str:
    """One spelling per value: sorted keys, no whitespace, UTF-8 kept, non-JSON types rejected."""
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )


def key_hash(key: dict) -> str:
    """sha256 hex of the canonical JSON of ``{"format": FORMAT_VERSION, "key": key}``."""
    if not isinstance(key, dict):
        raise TypeError(f"cache key must be a dict, got {type(key).__name__}: {key!r}")
    blob = canonical_json({"format": FORMAT_VERSION, "key": key})
    return hashlib.sha256(blob.encode()).hexdigest()


def dumps_record(record: dict) -> str:
    """One JSONL line (without the newline). Canonical, so the same records give the same bytes."""
    if not isinstance(record, dict):
        raise TypeError(f"a cached record must be a dict, got {type(record).__name__}: {record!r}")
    return canonical_json(record)


class Entry:
    """The files of one cache entry. Cheap to construct; touches nothing on disk."""

    def __init__(self, cache_dir: Path, namespace: str, key: dict):
        if not _NAMESPACE.match(namespace):
            raise ValueError(f"cache namespace {namespace!r} must match {_NAMESPACE.pattern}")
        self.key = key
        self.hash = key_hash(key)
        self.dir = Path(cache_dir) / namespace
        self.namespace = namespace
        self.path = self.dir / f"{self.hash}.jsonl"
        self.meta_path = self.dir / f"{self.hash}.meta.json"
        self.partial_path = self.dir / f"{self.hash}.partial.jsonl"
        self.lock_path = self.dir / f"{self.hash}.lock"

    def lock(self) -> FileLock:
        self.dir.mkdir(parents=True, exist_ok=True)
        return FileLock(str(self.lock_path))

    def remove_temp_files(self) -> None:
        """The temp files a killed builder of this entry left (call with the lock held)."""
        remove_temp_files(self.dir, prefix=self.hash)

    def read_meta(self) -> dict | None:
        try:
            meta = json.loads(self.meta_path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        # A different key under the same hash means a corrupted cache, not a collision worth handling.
        if meta.get("key") != json.loads(canonical_json(self.key)):
            raise RuntimeError(
                f"cache entry {self.meta_path} holds key {meta.get('key')!r}, expected {self.key!r}"
            )
        return meta

    def read(self) -> list[dict] | None:
        """The final file's records, or None when it does not exist yet."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        # split on "\n" only: str.splitlines would also split on U+2028 etc. inside raw UTF-8 strings
        return [json.loads(line) for line in text.split("\n") if line]

    def write_meta(self, count: int, complete: bool, extra: dict | None) -> None:
        old = self.read_meta() or {}
        now = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        meta = {
            "format": FORMAT_VERSION,
            "namespace": self.namespace,
            "hash": self.hash,
            "key": self.key,
            "count": count,
            "complete": complete,  # for streams: the source is exhausted, no more records exist
            "created": old.get("created", now),
            "updated": now,
            "provenance": {**old.get("provenance", {}), **(extra or {}), **_who()},
        }
        write_json_atomic(self.meta_path, meta)


def _who() -> dict:
    """Where and by what the entry was (last) built: enough to find the log of a bad build."""
    return {"host": platform.node(), "pid": os.getpid(), "python": platform.python_version()}


def entry(cache_dir: Path, namespace: str, key: dict) -> Entry:
    return Entry(cache_dir, namespace, key)


def load_or_build(
    cache_dir: Path,
    namespace: str,
    key: dict,
    build: Callable[[], Iterable[dict]],
    meta: dict | None = None,
) -> list[dict]:
    """The records of ``key``, built by ``build()`` at most once across processes.

    The records returned are always the ones read back from the file, so the first call and every
    later call return equal values (tuples come back as lists, as they would from any reader).
    ``meta`` (provenance: teacher, template, sampling params, checkpoint hash, ...) goes into the
    sidecar ``<hash>.meta.json``.
    """
    e = Entry(cache_dir, namespace, key)
    records = e.read()
    if records is not None:
        return records
    with e.lock():
        records = e.read()  # another process may have built it while we waited
        if records is not None:
            return records
        e.remove_temp_files()
        lines = [dumps_record(r) for r in build()]
        write_atomic(e.path, "".join(line + "\n" for line in lines))
        e.write_meta(len(lines), True, meta)
    return e.read() or []


def load_resumable(
    cache_dir: Path,
    namespace: str,
    key: dict,
    build_from: Callable[[int], Iterable[dict]],
    meta: dict | None = None,
) -> list[dict]:
    """Like ``load_or_build`` for a long finite generation that may be killed.

    ``build_from(start)`` yields the records from index ``start`` on (records ``0..start-1`` are
    already on disk). Each record is appended and flushed as it comes, so a crash at record 9,000
    keeps 9,000; the next call continues with ``build_from(9000)``. The final file appears only
    when the generator is exhausted.
    """
    return _load_stream(Entry(cache_dir, namespace, key), None, build_from, meta)


def load_prefix(
    cache_dir: Path,
    namespace: str,
    key: dict,
    n: int,
    build_from: Callable[[int], Iterable[dict]],
    meta: dict | None = None,
) -> list[dict]:
    """The first ``n`` records of the stream of ``key`` (fewer only if the stream ends before n).

    ``key`` must NOT contain n: the entry holds the longest prefix built so far and is extended
    (resumably, as in ``load_resumable``) when a caller needs more. ``build_from(start)`` must
    yield the stream from index ``start``; it may yield past n, the extra records are dropped.
    """
    if n < 0:
        raise ValueError(f"prefix size n={n} must be >= 0")
    return _load_stream(Entry(cache_dir, namespace, key), n, build_from, meta)


def _enough(records: list[dict] | None, n: int | None, meta: dict | None) -> bool:
    if records is None:
        return False
    complete = bool(meta and meta.get("complete") and meta.get("count") == len(records))
    return complete or (n is not None and len(records) >= n)


def _load_stream(
    e: Entry, n: int | None, build_from: Callable[[int], Iterable[dict]], meta: dict | None
) -> list[dict]:
    records = e.read()
    if records is not None and n is not None and len(records) >= n:
        return records[:n]  # fast path, no lock: the final file is always whole
    with e.lock():
        records = e.read()
        if not _enough(records, n, e.read_meta()):
            e.remove_temp_files()
            count, complete = _extend(e, records, n, build_from)
            e.write_meta(count, complete, meta)
            records = e.read()
    assert records is not None
    return records if n is None else records[:n]


def _extend(
    e: Entry, records: list[dict] | None, n: int | None, build_from: Callable[[int], Iterable[dict]]
) -> tuple[int, bool]:
    """Grow the partial file to n records (or to the end of the stream); publish it. Lock held."""
    if not e.partial_path.exists() and records:
        # Extending a published prefix: start the partial as a whole copy of it (temp + rename, so
        # a crash mid-copy cannot leave a short partial that would regenerate published records).
        tmp = e.dir / f".{e.partial_path.name}.copy.tmp"
        shutil.copyfile(e.path, tmp)
        os.replace(tmp, e.partial_path)
    have = _repair_partial(e.partial_path)
    complete = False
    with open(e.partial_path, "a", encoding="utf-8") as f:
        if n is None or have < n:
            stream: Iterator[dict] = iter(build_from(have))
            while n is None or have < n:
                try:
                    record = next(stream)
                except StopIteration:
                    complete = True
                    break
                f.write(dumps_record(record) + "\n")
                f.flush()  # survives a kill of this process (the page cache holds it)
                have += 1
            close = getattr(stream, "close", None)
            if close is not None:  # stop a generator now (e.g. its thread pool), not at GC time
                close()
        f.flush()
        os.fsync(f.fileno())  # survives a machine crash once published
    os.replace(e.partial_path, e.path)
    return have, complete


def _repair_partial(path: Path) -> int:
    """Drop a torn last line left by a kill mid-write; return the number of whole records kept."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
        return 0
    data = path.read_bytes()
    keep = data[: data.rfind(b"\n") + 1]
    lines = keep.splitlines()
    # A line can be whole but not JSON only if the file was damaged by something other than a kill.
    for i, line in enumerate(lines):
        try:
            json.loads(line)
        except json.JSONDecodeError:
            keep = b"".join(x + b"\n" for x in lines[:i])
            lines = lines[:i]
            break
    if len(keep) != len(data):
        with open(path, "r+b") as f:
            f.truncate(len(keep))
    return len(lines)


def read_meta(cache_dir: Path, namespace: str, key: dict) -> dict | None:
    """The sidecar of an entry (None when it was never built)."""
    return Entry(cache_dir, namespace, key).read_meta()
