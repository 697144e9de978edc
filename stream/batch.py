"""Archive redaction: many videos over a local process pool or a Ray cluster.

Every video is one task running the same pipeline as a single run
(``stream.job.run_job``). A manifest in the output folder records each
input's status, output checksum and run summary as tasks finish, so a
rerun resumes: inputs whose output is there with the recorded checksum are
not done again. A task writes to a ``.part`` file and renames it only when
the run succeeded, so a worker killed mid-video never leaves an output that
looks finished; failed tasks are retried (Ray also retries a task whose
worker died).
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import Config
from .errors import AnonError, ConfigError
from .sinks import VIDEO_EXTENSIONS

log = logging.getLogger("anonymousnet")

MANIFEST = "manifest.json"


def expand_inputs(items: Iterable[str]) -> list[str]:
    """Files named, matched by a glob, or listed one per line in a ``.txt`` file; in order, once each."""
    out: list[str] = []
    for item in items:
        if item.endswith(".txt") and os.path.isfile(item):
            lines = Path(item).read_text().splitlines()
            found = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
        elif any(c in item for c in "*?["):
            found = sorted(glob.glob(item, recursive=True))
            if not found:
                raise ConfigError(f"batch input {item}: the pattern matches no file")
        else:
            found = [item]
        for path in found:
            if not os.path.isfile(path):
                raise ConfigError(f"batch input {path}: no such file")
            if path not in out:
                out.append(path)
    if not out:
        raise ConfigError("batch: no input; give video files, globs, or a .txt list of paths")
    return out


def output_name(input_path: str) -> str:
    """The output file's name: the input's stem, a short hash of its full path (two
    inputs of the same name in different folders stay apart), its container."""
    path = Path(input_path)
    suffix = path.suffix.lower() if path.suffix.lower() in VIDEO_EXTENSIONS else ".mp4"
    digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:8]
    return f"{path.stem}-{digest}{suffix}"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class Manifest:
    """``OUTDIR/manifest.json``: one entry per input, rewritten atomically after each change."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / MANIFEST
        self.entries: dict[str, dict[str, Any]] = {}
        if self.path.exists():
            try:
                self.entries = json.loads(self.path.read_text())["inputs"]
            except (ValueError, KeyError) as exc:
                raise ConfigError(
                    f"{self.path}: not a batch manifest ({exc}); move it away to start over"
                ) from None

    def finished(self, input_path: str, folder: Path) -> bool:
        """Done before, and its output is still there, unchanged."""
        entry = self.entries.get(input_path)
        if not entry or entry.get("status") != "done":
            return False
        output = folder / entry["output"]
        return output.exists() and sha256_file(output) == entry.get("sha256")

    def update(self, input_path: str, **fields: Any) -> None:
        self.entries.setdefault(input_path, {}).update(fields)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"version": 1, "inputs": self.entries}, indent=2, default=str) + "\n")
        os.replace(tmp, self.path)


def process_video(input_path: str, output: str, config: Config) -> dict[str, Any]:
    """One task: anonymize ``input_path`` into ``output`` (through a ``.part`` file);
    returns the run summary and the output's sha256. Runs in a pool or Ray worker."""
    from .job import run_job

    final = Path(output)
    part = final.with_name(final.stem + ".part" + final.suffix)
    result = run_job(input_path, str(part), config)
    if result.damage:
        raise AnonError(result.damage)
    os.replace(part, final)
    summary = result.summary() | {"output": str(final)}
    return {"summary": summary, "sha256": sha256_file(final), "host": os.uname().nodename}


@dataclass
class BatchResult:
    done: int
    skipped: int
    failed: int
    seconds: float
    manifest: Path


Event = Callable[[str, str, dict[str, Any]], None]


def run_batch(
    inputs: list[str],
    folder: Path,
    config: Config,
    workers: int,
    ray_address: str | None = None,
    use_ray: bool = False,
    retries: int = 2,
    on_event: Event | None = None,
) -> BatchResult:
    """Anonymize every input into ``folder``, skipping what a previous run finished."""
    folder.mkdir(parents=True, exist_ok=True)
    manifest = Manifest(folder)
    todo, skipped = [], 0
    for path in inputs:
        if manifest.finished(path, folder):
            skipped += 1
            if on_event:
                on_event("skipped", path, manifest.entries[path])
        else:
            todo.append(path)
            manifest.update(path, output=output_name(path), status="pending", error=None)
    started = time.monotonic()

    def finished(path: str, outcome: dict[str, Any] | None, error: str | None, attempts: int) -> None:
        if outcome is not None:
            manifest.update(path, status="done", sha256=outcome["sha256"], summary=outcome["summary"],
                            host=outcome["host"], error=None, attempts=attempts)  # fmt: skip
        else:
            manifest.update(path, status="failed", error=error, attempts=attempts)
        if on_event:
            on_event("done" if outcome is not None else "failed", path, manifest.entries[path])

    jobs = [(path, str(folder / output_name(path))) for path in todo]
    if use_ray:
        _run_on_ray(jobs, config, ray_address, workers, retries, finished)
    else:
        _run_on_pool(jobs, config, workers, retries, finished)
    statuses = [manifest.entries[path]["status"] for path in todo]
    return BatchResult(
        done=statuses.count("done"),
        skipped=skipped,
        failed=statuses.count("failed"),
        seconds=time.monotonic() - started,
        manifest=manifest.path,
    )


Finished = Callable[[str, dict[str, Any] | None, str | None, int], None]


def _run_on_pool(
    jobs: list[tuple[str, str]], config: Config, workers: int, retries: int, finished: Finished
) -> None:
    """A local process pool; a task that raised or whose worker died is retried."""
    import multiprocessing

    attempts = {path: 0 for path, _ in jobs}
    queue = list(jobs)
    while queue:
        pool = ProcessPoolExecutor(max(1, workers), mp_context=multiprocessing.get_context("spawn"))
        running: dict[Future[dict[str, Any]], tuple[str, str]] = {}
        broken = False
        try:
            for job in queue:
                attempts[job[0]] += 1
                running[pool.submit(process_video, job[0], job[1], config)] = job
            queue = []
            while running:
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    job = running.pop(future)
                    try:
                        finished(job[0], future.result(), None, attempts[job[0]])
                    except BrokenProcessPool:
                        broken = True  # a worker died: every unfinished task is retried
                        queue.append(job)
                    except Exception as exc:  # noqa: BLE001 - recorded, retried
                        if attempts[job[0]] <= retries:
                            log.warning("batch: %s failed (%s); retrying", job[0], exc)
                            queue.append(job)
                        else:
                            finished(job[0], None, f"{type(exc).__name__}: {exc}", attempts[job[0]])
                if broken:
                    queue.extend(running.values())
                    running.clear()
        finally:
            pool.shutdown(wait=not broken, cancel_futures=True)
        for job in list(queue):
            if attempts[job[0]] > retries:
                queue.remove(job)
                finished(job[0], None, "its worker died on every attempt", attempts[job[0]])


def _run_on_ray(
    jobs: list[tuple[str, str]],
    config: Config,
    address: str | None,
    workers: int,
    retries: int,
    finished: Finished,
) -> None:
    """Ray tasks, one per video; Ray retries a task whose worker died, we retry one that raised."""
    import ray

    if not ray.is_initialized():
        try:
            if address:
                # A cluster on this machine's loopback is joined from loopback too.
                local = address.split(":")[0] in ("127.0.0.1", "localhost")
                ray.init(
                    address=address, log_to_driver=False, _node_ip_address="127.0.0.1" if local else None
                )
            else:
                ray.init(num_cpus=max(1, workers), include_dashboard=False, log_to_driver=False)
        except ConnectionError as exc:
            raise ConfigError(f"--ray {address}: cannot reach the Ray cluster ({exc})") from None
    task = ray.remote(num_cpus=1, max_retries=retries)(process_video)
    attempts = {path: 1 for path, _ in jobs}
    running = {task.remote(path, output, config): (path, output) for path, output in jobs}
    while running:
        ready, _ = ray.wait(list(running), num_returns=1)
        for ref in ready:
            path, output = running.pop(ref)
            try:
                finished(path, ray.get(ref), None, attempts[path])
            except Exception as exc:  # noqa: BLE001 - a task error, or a worker that died on every retry
                if attempts[path] <= retries and not isinstance(exc, ray.exceptions.WorkerCrashedError):
                    attempts[path] += 1
                    log.warning("batch: %s failed (%s); retrying", path, exc)
                    running[task.remote(path, output, config)] = (path, output)
                else:
                    finished(path, None, f"{type(exc).__name__}: {exc}", attempts[path])
