"""Archive redaction: many videos over a local process pool or a Ray cluster.

Every video is one task running the same pipeline as a single run
(``stream.run.job.run_job``). A manifest in the output folder records each
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
import secrets
import time
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engines.zoo import sha256_file
from stream.config import Config
from stream.errors import AnonError, ConfigError
from stream.io.redact import scrub
from stream.io.sinks import VIDEO_EXTENSIONS

log = logging.getLogger("anonymousnet")

MANIFEST = "manifest.json"


# What a folder given to batch contributes: its videos and still images, at any depth.
MEDIA_EXTENSIONS = (*VIDEO_EXTENSIONS, ".avi", ".webm", ".ts", ".mts", ".m2ts", ".flv", ".wmv", ".mpg",
                    ".mpeg", ".3gp", ".gif", ".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif",
                    ".tiff")  # fmt: skip


def expand_inputs(items: Iterable[str]) -> list[str]:
    """Files named, folders (their video and image files, recursively), matched by a
    glob, or listed one per line in a ``.txt`` file; in order, once each."""
    out: list[str] = []
    for item in items:
        if os.path.isdir(item):
            found = sorted(
                str(p) for p in Path(item).rglob("*") if p.is_file() and p.suffix.lower() in MEDIA_EXTENSIONS
            )
            if not found:
                raise ConfigError(f"batch input {item}: the folder holds no video or image file")
        elif item.endswith(".txt") and os.path.isfile(item):
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
        tmp.write_text(
            scrub(json.dumps({"version": 1, "inputs": self.entries}, indent=2, default=str)) + "\n"
        )
        os.replace(tmp, self.path)


def process_video(input_path: str, output: str, config: Config) -> dict[str, Any]:
    """One task: anonymize ``input_path`` into ``output`` (through a ``.part`` file);
    returns the run summary and the output's sha256. Runs in a pool or Ray worker."""
    from stream.run.job import run_job

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


@dataclass(frozen=True)
class Job:
    """One task: ``fn(*args)`` in a worker; ``key`` names it in the callbacks."""

    key: str
    fn: Callable[..., dict[str, Any]]
    args: tuple[Any, ...]


Event = Callable[[str, str, dict[str, Any]], None]
Finished = Callable[[str, dict[str, Any] | None, str | None, int], None]


def process_part(
    path: str,
    segment: Any,
    output: str,
    config: Config,
    pinned: dict[int, Any] | None = None,
    secret_seed: int | None = None,
) -> dict[str, Any]:
    """One segment of a long video (``stream.run.segments``), in a worker."""
    from stream.run.segments import process_segment

    return process_segment(path, segment, output, config, pinned, secret_seed)


def run_batch(  # noqa: C901 - videos, segments, pins and stitching in one loop; to split
    inputs: list[str],
    folder: Path,
    config: Config,
    workers: int,
    ray_address: str | None = None,
    use_ray: bool = False,
    retries: int = 2,
    on_event: Event | None = None,
    segment_s: float = 0.0,
) -> BatchResult:
    """Anonymize every input into ``folder``, skipping what a previous run finished.

    ``segment_s`` > 0: videos longer than that are cut into keyframe-aligned
    segments of about that length, run as tasks of their own and stitched
    back here (every frame kept, track identities carried across borders);
    ``NAME.tracks.jsonl`` beside the output holds the joined track log. In
    synth mode a person keeps their surrogate across borders: segments where a
    track crossing one chose another than before it are run again with it
    pinned (a second round, after the first).
    """
    from stream.run.segments import carried_surrogates, link_tracks, plan, stitch, write_tracks

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

    def record(path: str, outcome: dict[str, Any] | None, error: str | None, attempts: int) -> None:
        if outcome is not None:
            manifest.update(path, status="done", sha256=outcome["sha256"], summary=outcome["summary"],
                            host=outcome["host"], error=None, attempts=attempts)  # fmt: skip
        else:  # an error text may quote a server address with its password (a triton:// backend)
            error = scrub(error or "", config.detect.backend)
            manifest.update(path, status="failed", error=error, attempts=attempts)
        if on_event:
            on_event("done" if outcome is not None else "failed", path, manifest.entries[path])

    jobs: list[Job] = []
    plans: dict[str, list[Any]] = {}
    parts: dict[str, dict[int, dict[str, Any] | None]] = {}
    part_of: dict[str, tuple[str, int]] = {}  # job key -> (video, segment number)
    carried: dict[str, dict[int, dict[int, Any]]] = {}  # video -> segment -> pinned surrogates
    again: list[Job] = []  # the second round: segments run again with surrogates pinned
    secrets_of: dict[str, int] = {}
    scratch = folder / ".parts"
    for path in todo:
        output = str(folder / output_name(path))
        segments = plan(path, segment_s) if segment_s > 0 else []
        if len(segments) < 2:
            jobs.append(Job(path, process_video, (path, output, config)))
            continue
        scratch.mkdir(exist_ok=True)
        plans[path], parts[path] = segments, {}
        # One secret per video for its segments' randomized response: passed to the workers
        # in memory, never written (a segment run again with pins then draws as before).
        secrets_of[path] = secrets.randbits(128)
        for seg in segments:
            part = scratch / f"{Path(output).stem}.{seg.number}.mp4"
            key = f"{path} (segment {seg.number})"
            part_of[key] = (path, seg.number)
            jobs.append(Job(key, process_part, (path, seg, str(part), config, None, secrets_of[path])))

    def finished(key: str, outcome: dict[str, Any] | None, error: str | None, attempts: int) -> None:
        if key not in part_of:
            record(key, outcome, error, attempts)
            return
        path, number = part_of[key]
        parts[path][number] = outcome
        if outcome is None:
            manifest.update(path, error=f"segment {number}: {error}")
        if len(parts[path]) < len(plans[path]):
            return
        if any(result is None for result in parts[path].values()):
            record(path, None, manifest.entries[path].get("error") or "a segment failed", attempts)
            return
        segments = plans[path]
        results = [r for seg in segments if (r := parts[path][seg.number]) is not None]  # none failed
        files = [scratch / f"{Path(output_name(path)).stem}.{seg.number}.mp4" for seg in segments]
        if path not in carried:
            carried[path] = carried_surrogates(results, segments)
            for number, pinned in carried[path].items():
                key = f"{path} (segment {number}, surrogates carried)"
                part_of[key] = (path, number)
                del parts[path][number]
                args = (path, segments[number], str(files[number]), config, pinned, secrets_of[path])
                again.append(Job(key, process_part, args))
            if carried[path]:
                return
        final = folder / output_name(path)
        stamps = [
            [f["pts"] for f in r["tracks"] if f["pts"] >= seg.start_pts]
            for r, seg in zip(results, segments, strict=True)
        ]
        try:
            frames_out = stitch(path, files, final, stamps)
        except AnonError as exc:
            record(path, None, str(exc), attempts)
            return
        tracks = link_tracks(results, segments)
        write_tracks(tracks, final.with_suffix(".tracks.jsonl"))
        for file in files:
            file.unlink(missing_ok=True)
        summary = {
            "input": path,
            "output": str(final),
            "frames_out": frames_out,
            "segments": len(segments),
            "tracks": len({i for frame in tracks for i in frame["ids"]}),
            "surrogates_carried": sum(len(pins) for pins in carried[path].values()),
            # Tracks whose person still shows another surrogate after a border (pooled ones,
            # made of this stream's people, cannot be carried).
            "surrogate_changes": sum(len(pins) for pins in carried_surrogates(results, segments).values()),
            "frames_masked_whole": sum(r["masked_whole"] for r in results),
        }
        record(path, {"summary": summary, "sha256": sha256_file(final), "host": os.uname().nodename}, None,
               attempts)  # fmt: skip

    for round_ in (jobs, again):
        if not round_:
            continue
        if use_ray:
            _run_on_ray(list(round_), ray_address, workers, retries, finished)
        else:
            _run_on_pool(list(round_), workers, retries, finished)
    statuses = [manifest.entries[path]["status"] for path in todo]
    return BatchResult(
        done=statuses.count("done"),
        skipped=skipped,
        failed=statuses.count("failed"),
        seconds=time.monotonic() - started,
        manifest=manifest.path,
    )


def _run_on_pool(jobs: list[Job], workers: int, retries: int, finished: Finished) -> None:
    """A local process pool; a task that raised or whose worker died is retried."""
    import multiprocessing

    attempts = {job.key: 0 for job in jobs}
    queue = list(jobs)
    while queue:
        pool = ProcessPoolExecutor(max(1, workers), mp_context=multiprocessing.get_context("spawn"))
        running: dict[Future[dict[str, Any]], Job] = {}
        broken = False
        try:
            for job in queue:
                attempts[job.key] += 1
                running[pool.submit(job.fn, *job.args)] = job
            queue = []
            while running:
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    job = running.pop(future)
                    try:
                        finished(job.key, future.result(), None, attempts[job.key])
                    except BrokenProcessPool:
                        broken = True  # a worker died: every unfinished task is retried
                        queue.append(job)
                    except Exception as exc:  # recorded, retried
                        if attempts[job.key] <= retries:
                            log.warning("batch: %s failed (%s); retrying", job.key, exc)
                            queue.append(job)
                        else:
                            finished(job.key, None, f"{type(exc).__name__}: {exc}", attempts[job.key])
                if broken:
                    queue.extend(running.values())
                    running.clear()
        finally:
            pool.shutdown(wait=not broken, cancel_futures=True)
        for job in list(queue):
            if attempts[job.key] > retries:
                queue.remove(job)
                finished(job.key, None, "its worker died on every attempt", attempts[job.key])


def _run_on_ray(jobs: list[Job], address: str | None, workers: int, retries: int, finished: Finished) -> None:
    """Ray tasks; Ray retries a task whose worker died, we retry one that raised."""
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
    remote = {fn: ray.remote(num_cpus=1, max_retries=retries)(fn) for fn in {job.fn for job in jobs}}
    attempts = {job.key: 1 for job in jobs}
    running = {remote[job.fn].remote(*job.args): job for job in jobs}
    while running:
        ready, _ = ray.wait(list(running), num_returns=1)
        for ref in ready:
            job = running.pop(ref)
            try:
                finished(job.key, ray.get(ref), None, attempts[job.key])
            except Exception as exc:  # a task error, or a worker that died on every retry
                if attempts[job.key] <= retries and not isinstance(exc, ray.exceptions.WorkerCrashedError):
                    attempts[job.key] += 1
                    log.warning("batch: %s failed (%s); retrying", job.key, exc)
                    running[remote[job.fn].remote(*job.args)] = job
                else:
                    finished(job.key, None, f"{type(exc).__name__}: {exc}", attempts[job.key])
