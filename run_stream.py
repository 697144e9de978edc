#!/usr/bin/env python3
"""anonymousnet command line.

    python run_stream.py INPUT -o OUTPUT [--mode blur|pixelate|mask] [--config FILE] ...
    python run_stream.py --demo [-o OUTPUT]           anonymize the built-in clip
    python run_stream.py models [--fetch] [--verify]  the model zoo
    python run_stream.py leak INPUT [--mode ...]      leak rate against a two-detector reference
    python run_stream.py privacy FOLDER [--json F]    attributes, PPAS and k / l / t over face photos

Errors are one line on stderr and a non-zero exit code (see stream.errors).

Over 400 lines: one function per subcommand; the flags are to be generated from
the config declaration (issue 16 item 5).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import secrets
import signal
import sys
import threading
import time
import typing
from pathlib import Path
from typing import Any, NoReturn

from stream.errors import AnonError, ConfigError, Signalled, signal_number

EXIT_INTERNAL = 70


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad command line as one line, not a usage dump."""

    def error(self, message: str) -> NoReturn:
        from stream.io.redact import scrub

        print(scrub(f"error: {message} (see {self.prog} --help)", *sys.argv), file=sys.stderr)
        raise SystemExit(2)


def _colour(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected R,G,B integers, got {text!r}") from None
    if len(values) != 3:
        raise argparse.ArgumentTypeError(f"expected three values R,G,B, got {text!r}")
    return values


def _add_pipeline_options(p: argparse.ArgumentParser) -> None:
    """``--config``, ``--set`` and one flag per config field that declares one (``Flag`` in
    stream/config.py, beside the field's type, default and range)."""
    from stream.config import GROUPS, PROFILES, flag_fields

    p.add_argument(
        "--config", type=Path, help="TOML file with any of the options (sections as in stream/config.py)"
    )
    p.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE",
                   help="any config option, e.g. source.reconnect_backoff_s=1 (repeatable)")  # fmt: skip
    p.add_argument("--profile", choices=sorted(PROFILES),
                   help="start from settings for a kind of use (webcam: one large face from a "
                        "local camera, live); a config file and flags override it")  # fmt: skip
    groups = {name: p.add_argument_group(name) for name in GROUPS}
    for option in flag_fields():
        _add_flag(groups[option.flag.group], option)


def _add_flag(group: Any, option: Any) -> None:
    """The flag of one config field: its type and choices from the field's type hint, its
    help with the field's default."""
    flag, hint = option.flag, option.hint
    default = option.default
    shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
    text = f"{flag.help} (default {shown})" if flag.show_default else flag.help
    if hint is bool or bool in typing.get_args(hint):
        if flag.negative is None:
            group.add_argument(*flag.names, dest=option.dest, action="store_true", default=None, help=text)
            return
        both = group.add_mutually_exclusive_group()
        both.add_argument(*flag.names, dest=option.dest, action="store_true", default=None, help=text)
        both.add_argument(flag.negative[0], dest=option.dest, action="store_false", help=flag.negative[1])
        return
    metavar = flag.names[0].lstrip("-").upper().replace("-", "_")
    if typing.get_origin(hint) is typing.Literal:
        group.add_argument(*flag.names, dest=option.dest, choices=list(typing.get_args(hint)), help=text)
    elif typing.get_origin(hint) is tuple:
        group.add_argument(*flag.names, dest=option.dest, type=_colour, metavar="R,G,B", help=text)
    else:
        kind = hint if hint in (int, float) else str
        group.add_argument(*flag.names, dest=option.dest, type=kind, metavar=metavar, help=text)


def config_from_args(args: argparse.Namespace) -> Any:
    from stream.config import build_config, flag_fields, parse_option

    overrides: dict[str, dict[str, Any]] = {}
    for section, name, value in map(parse_option, getattr(args, "set", None) or []):
        overrides.setdefault(section, {})[name] = value
    for option in flag_fields():
        value = getattr(args, option.dest, None)
        if value is not None:
            overrides.setdefault(option.section, {})[option.name] = value
    return build_config(args.config, overrides, getattr(args, "profile", None))


def _progress_printer(quiet: bool, every_s: float = 10.0) -> Any:
    """A progress callback: on a terminal a tqdm bar (files) or status line (live
    streams); into a log (stderr redirected) one plain line every ``every_s`` seconds."""
    if quiet:
        return None
    if not sys.stderr.isatty():
        last = [time.monotonic()]

        def line(stats: Any, total: int, live: bool) -> None:
            if stats.finished is None and time.monotonic() - last[0] < every_s:
                return
            last[0] = time.monotonic()
            of = f"/{total}" if total and not live else ""
            latency = stats.latency_ms(0.95) if live and stats.latencies else None
            print(f"progress: {stats.frames_out}{of} frames, {stats.fps:.1f}/s, {stats.faces} faces, "
                  f"{stats.max_track_id} tracks, {stats.frames_dropped} dropped"
                  + (f", p95 {latency:.0f} ms" if latency is not None else ""), file=sys.stderr)  # fmt: skip

        return line
    from tqdm import tqdm

    state: dict[str, Any] = {}

    def update(stats: Any, total: int, live: bool) -> None:
        bar = state.get("bar")
        if bar is None:
            bar = tqdm(total=total or None, unit="frame", dynamic_ncols=True, file=sys.stderr,
                       desc="live" if live else "anonymizing")  # fmt: skip
            state["bar"] = bar
        bar.n = stats.frames_out
        postfix = {"faces": stats.faces, "tracks": stats.max_track_id}
        if live:
            postfix["dropped"] = stats.frames_dropped
            if stats.latencies:  # glass to glass: capture to write, or to publish for rtsp:// outputs
                for name, q in (("p50ms", 0.5), ("p95ms", 0.95), ("p99ms", 0.99)):
                    postfix[name] = round(stats.latency_ms(q))
        bar.set_postfix(postfix, refresh=False)
        bar.refresh()
        if stats.finished is not None:
            bar.close()

    return update


def _print_summary(summary: dict[str, Any]) -> None:
    lat = summary["latency_ms"]
    lines = [
        f"input      {summary['input']}",
        f"output     {summary['output']}",
        f"frames     {summary['frames_in']} in, {summary['frames_out']} out, "
        f"{summary['frames_dropped']} dropped, {summary['frames_masked_whole']} masked whole",
        f"faces      {summary['faces_detected']} detections in {summary['tracks']} tracks",
        f"audio      {summary['audio_packets_copied']} packets copied",
        f"speed      {summary['fps']} frames/s over {summary['seconds']} s ({summary['backend']})",
    ]
    if summary["live"]:
        lines.append(f"latency    p50 {lat['p50']} ms, p95 {lat['p95']} ms, p99 {lat['p99']} ms"
                     f" (capture to {'publish' if summary['publish'] else 'write'})")  # fmt: skip
        lines.append(f"input      {summary['input_reconnects']} reconnections")
    publish = summary.get("publish")
    if publish:
        lines.append(f"publish    {publish['frames_published']} frames sent, "
                     f"{publish['frames_dropped']} dropped, {publish['reconnects']} reconnections, "
                     f"{publish['audio_dropped']} audio packets dropped")  # fmt: skip
    synthesis = summary.get("synthesis")
    if synthesis:
        fallback = ", ".join(f"{n} {why}" for why, n in synthesis["fallback"].items()) or "none"
        lines.append(f"synthesis  {synthesis['replaced']} faces replaced (k={synthesis['k']}); "
                     f"fell back to obscuring: {fallback}")  # fmt: skip
    privacy = summary.get("privacy")
    if privacy:
        verdict = "yes" if privacy["private"] else "no"
        lines.append(
            f"privacy    private: {verdict}; k={privacy['k']} l={privacy['l']} t={privacy['t']} "
            f"epsilon={privacy['epsilon']} over {privacy['classes']} classes; attribute changes to reach "
            f"k={privacy['stricter_target']['k']}: {privacy['changes_to_reach_k']}, "
            f"t={privacy['stricter_target']['t']}: {privacy['changes_to_reach_t']}"
        )
    print("\n".join(lines), file=sys.stderr)


def anonymize_parser() -> argparse.ArgumentParser:
    """The main command's parser: inputs and outputs, then every pipeline option."""
    p = _Parser(prog="run_stream.py", description="Anonymize every face in a video file, stream or camera.")
    p.add_argument("input", nargs="*", help="video file, URL (rtsp://, http://, lavfi:...) or camera "
                   "index; several run at once, one -o each")  # fmt: skip
    p.add_argument("-o", "--output", action="append",
                   help="output .mp4/.mkv/.mov, rtsp://, image folder or 'null' (one per input)")  # fmt: skip
    p.add_argument(
        "--streams", type=Path, help="TOML file of [[stream]] tables (name, input, output, report)"
    )
    p.add_argument(
        "--processes",
        default="auto",
        metavar="N|auto",
        help="worker processes for several streams (auto: one per core, at most one per stream)",
    )
    p.add_argument("--demo", action="store_true", help="anonymize the built-in demo clip")
    p.add_argument("--report", type=Path, help="write a JSON run report here")
    p.add_argument("--regions", type=Path, help="write per-frame obscured boxes here (JSON lines)")
    p.add_argument(
        "--review",
        type=Path,
        metavar="DIR",
        help="write a review page here (index.html): timeline, checks, tracks, privacy",
    )
    p.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on this port (/metrics)")
    p.add_argument("--metrics-host", default="127.0.0.1",
                   help="address the metrics endpoint binds (127.0.0.1; 0.0.0.0: all)")  # fmt: skip
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar or summary")
    _add_pipeline_options(p)
    return p


def cmd_anonymize(argv: list[str]) -> int:
    p = anonymize_parser()
    args = p.parse_args(argv)

    from stream.run.job import RegionLog, Review, run_job

    if args.streams or len(args.input) > 1:
        return _anonymize_streams(p, args)
    args.input = args.input[0] if args.input else None
    if args.output and len(args.output) > 1:
        p.error("one input takes one -o OUTPUT")
    args.output = args.output[0] if args.output else None
    collector = _metrics(args.metrics_port, args.metrics_host)
    if args.demo:
        from engines.zoo import cache_dir
        from stream.io.demo import write_demo_clip

        clip = cache_dir() / "demo" / "astronaut.mp4"
        if not clip.exists():
            write_demo_clip(clip)
        args.input = str(clip)
        args.output = args.output or "out/demo_anonymized.mp4"
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    if not args.input:
        p.error("an INPUT is required (or --demo)")
    if not args.output:
        p.error("an output is required: -o OUTPUT")
    config = config_from_args(args)
    # Line-buffered: a run that is killed keeps its record of every frame it wrote.
    for path in (args.regions, args.report):
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
    regions_file = open(args.regions, "w", buffering=1) if args.regions else None
    try:
        result = run_job(
            args.input, args.output, config,
            progress=_progress_printer(args.quiet),
            regions=RegionLog(regions_file) if regions_file else None,
            report=args.report,
            on_start=(lambda runner: collector.add("main", runner)) if collector else None,
            review=Review.for_config(args.review, config) if args.review else None,
        )  # fmt: skip
    finally:
        if regions_file:
            regions_file.close()
    if not args.quiet:
        _print_summary(result.summary())
        if result.review:
            _print_review(result.review, result.stats.elapsed_s)
    if result.damage:
        print(f"error: {result.damage}; the output holds every frame that could be read", file=sys.stderr)
        return 4
    return 0


def _metrics(port: int | None, host: str) -> Any:
    """A collector serving /metrics on ``host``:``port``, or None without a port."""
    if not port:
        return None
    from stream.run.metrics import StreamsCollector, serve

    collector = StreamsCollector()
    try:
        serve(port, collector, host)
    except OSError as exc:
        raise ConfigError(f"--metrics-port {port} on {host}: cannot listen ({exc.strerror or exc})") from None
    return collector


def _anonymize_streams(p: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """Several inputs at once in one process, models shared (``stream.run.multi``)."""
    from stream.io.redact import scrub
    from stream.run.multi import StreamSpec, read_streams

    if args.demo or args.regions or args.review:
        p.error("--demo, --regions and --review take a single input")
    if args.streams:
        if args.input or args.output:
            p.error("give the streams either in --streams FILE or as INPUT... -o OUTPUT..., not both")
        specs = read_streams(args.streams)
    else:
        if not args.output or len(args.output) != len(args.input):
            p.error(f"{len(args.input)} inputs need as many -o OUTPUT, in the same order")
        specs = [
            StreamSpec(f"stream{i + 1}", src, out)
            for i, (src, out) in enumerate(zip(args.input, args.output, strict=True))
        ]
    config = config_from_args(args)
    collector = _metrics(args.metrics_port, args.metrics_host)
    last = [0.0]

    def status(runners: dict[str, Any]) -> None:
        if args.quiet or time.monotonic() - last[0] < 2:
            return
        last[0] = time.monotonic()
        for name, runner in runners.items():
            s = runner.stats
            ms = s.latency_ms(0.5)
            p50 = f"{ms:.0f}" if ms is not None else "-"
            print(f"{name}: {s.frames_out} frames, {s.fps:.1f}/s, {s.frames_dropped} dropped, "
                  f"{s.faces} faces, p50 {p50} ms", file=sys.stderr)  # fmt: skip

    processes = _processes(p, args.processes, len(specs))
    on_start = (lambda name, runner: collector.add(name, runner)) if collector else None
    results = _stream_results(specs, config, processes, on_start, status)
    summaries = {}
    for name, summary, error, _ in results:
        summaries[name] = {"summary": summary, "error": error}
        if not args.quiet:
            print(f"--- {name}", file=sys.stderr)
            if summary:
                _print_summary(summary)
            if error:
                print(scrub(f"error: {error}"), file=sys.stderr)
    if args.report:
        args.report.write_text(
            scrub(json.dumps({"processes": processes, "streams": summaries}, indent=2, default=str)) + "\n"
        )
    return max((code for *_, code in results), default=0)


def _stream_results(specs: Any, config: Any, processes: int, on_start: Any, status: Any) -> list[Any]:
    """Each stream's (name, summary, error, exit code): in this process, or over workers."""
    from stream.run.multi import run_streams

    if processes > 1:
        from stream.run.processes import run_in_processes

        reports = run_in_processes(specs, config, processes, on_start=on_start, progress=status)
        return [(r.name, r.summary, r.error, r.exit_code) for r in reports]
    results = []
    for outcome in run_streams(specs, config, on_start=on_start, progress=status):
        error = outcome.error
        summary = outcome.result.summary() if outcome.result else None
        results.append(
            (outcome.spec.name, summary, str(error) if error else None, error.exit_code if error else 0)
        )
    return results


def _processes(p: argparse.ArgumentParser, value: str, streams: int) -> int:
    """``--processes``: a count, or ``auto`` (one per core, at most one per stream)."""
    from stream.run.processes import auto_processes

    if value == "auto":
        return auto_processes(streams)
    if not value.isdigit() or not 1 <= int(value) <= 256:
        p.error(f"--processes {value}: expected auto or a count from 1 to 256")
    return min(int(value), streams)


def _print_review(review: dict[str, Any], run_s: float) -> None:
    print(f"review page: {review['page']} (written in {review['seconds']:.1f} s, pictures gathered in "
          f"{review['recorder_seconds']:.1f} s of the {run_s:.1f} s run)")  # fmt: skip


def cmd_review(argv: list[str]) -> int:
    """The review page of a finished run, from its report, its regions file and its output."""
    p = _Parser(
        prog="run_stream.py review",
        description="Write the review page of a finished run (one run with --report and --regions).",
    )
    p.add_argument("report", type=Path, help="the run's JSON report (--report)")
    p.add_argument("-o", "--outdir", type=Path, required=True, help="folder for the page (index.html)")
    p.add_argument("--regions", type=Path, help="the run's regions file (default: the report's)")
    p.add_argument(
        "--review-originals",
        action="store_true",
        help="show the original faces too, cut from the input (say who may see it)",
    )
    args = p.parse_args(argv)

    from stream.review.page import review_finished

    page = review_finished(args.report, args.outdir, args.regions, args.review_originals)
    print(f"review page: {page.path} (written in {page.seconds:.1f} s)")
    return 0


def cmd_export_triton(argv: list[str]) -> int:
    from engines import zoo
    from engines.triton import export_repository

    p = _Parser(prog="run_stream.py models export-triton",
                description="Write a Triton Inference Server model repository of the zoo's ONNX models "
                            "(dynamic batching; TensorRT FP16 on GPU instances).")  # fmt: skip
    p.add_argument("folder", type=Path)
    p.add_argument("names", nargs="*", help="models (default: all)")
    p.add_argument("--max-batch", type=int, default=8, help="largest batch the server forms (8)")
    p.add_argument("--cpu", action="store_true", help="CPU instances, no TensorRT (a server without GPU)")
    args = p.parse_args(argv)
    names = args.names or list(zoo.REGISTRY)
    unknown = sorted(set(names) - set(zoo.REGISTRY))
    if unknown:
        p.error(f"unknown model {unknown[0]} (known: {', '.join(zoo.REGISTRY)})")
    for folder in export_repository(args.folder, names, args.max_batch, gpu=not args.cpu):
        print(folder)
    print(f"start a server on it: tritonserver --model-repository {args.folder.resolve()}; "
          "then --backend triton://HOST:8001", file=sys.stderr)  # fmt: skip
    return 0


def cmd_models(argv: list[str]) -> int:
    from engines import zoo

    if argv[:1] == ["export-triton"]:
        return cmd_export_triton(argv[1:])
    p = _Parser(prog="run_stream.py models", description="List, fetch and verify the model zoo.")
    p.add_argument("--fetch", action="store_true", help="fetch and convert what is missing")
    p.add_argument("--verify", action="store_true", help="check cached models against their sha256")
    p.add_argument("--stargan", nargs="?", const="official", metavar="CKPT",
                   help="export a StarGAN checkpoint to ONNX for --stargan runs; without CKPT the "
                        "official CelebA generator, downloaded first (needs the web)")  # fmt: skip
    p.add_argument("names", nargs="*", help="models (default: all)")
    args = p.parse_args(argv)
    if args.stargan:
        from engines.stargan import prepare

        print(f"stargan      ok         {prepare(args.stargan, zoo.cache_dir())}")
        return 0
    names = args.names or list(zoo.REGISTRY)
    failed = 0
    for name in names:
        spec = zoo.spec(name)
        if args.fetch or args.verify:
            zoo.ensure(name) if args.fetch else None
            problem = zoo.verify(name)
            status = "ok" if problem is None else problem
            failed += problem is not None
            print(f"{name:12s} {status:10s} {zoo.model_path(name)}")
        else:
            state = zoo.verify(name) or "ok"
            print(f"{name:12s} {spec.source.describe()}\n  input:   {spec.inputs}")
            print(f"  outputs: {spec.outputs}\n  licence: {spec.license}\n  state:   {state}")
    if args.fetch and not args.names and not failed:
        from calibration.gallery import ensure_builtin

        print(f"{'gallery':12s} {'ok':10s} {ensure_builtin()}")
    return 1 if failed else 0


def cmd_leak(argv: list[str]) -> int:
    from stream.measure.leak import MAX_DETAIL, measure_leak

    p = _Parser(prog="run_stream.py leak",
                description="Leak rate: reference faces (CenterFace at full resolution and upscaled on small "
                            "frames, united with face-api's SSD MobileNet v1; every frame) that a run left "
                            "uncovered, or covered but still sharp. A file's reference is kept in the "
                            "model cache for the next measurement.")  # fmt: skip
    p.add_argument("input")
    p.add_argument(
        "--modes",
        nargs="+",
        default=["blur", "pixelate", "mask"],
        choices=["blur", "pixelate", "mask", "synth"],
    )
    p.add_argument("--min-height", type=float, default=12.0, help="smallest reference face counted, px (12)")
    p.add_argument(
        "--ref-threshold", type=float, default=0.5, help="reference CenterFace score threshold (0.5)"
    )
    p.add_argument("--second-threshold", type=float, default=0.5,
                   help="reference SSD score threshold (0.5)")  # fmt: skip
    p.add_argument("--confirm-threshold", type=float, default=0.3,
                   help="CenterFace score that confirms a face only the SSD finds (0.3)")  # fmt: skip
    p.add_argument("--max-detail", type=float, default=MAX_DETAIL,
                   help=f"retained detail from which a covered face is sharp ({MAX_DETAIL})")  # fmt: skip
    p.add_argument("--json", type=Path, help="write the figures here")
    _add_pipeline_options(p)
    args = p.parse_args(argv)
    results = measure_leak(args.input, args.modes, lambda mode: config_from_args(_with_mode(args, mode)),
                           min_height=args.min_height, ref_threshold=args.ref_threshold,
                           second_threshold=args.second_threshold, confirm=args.confirm_threshold,
                           max_detail=args.max_detail, cache=True)  # fmt: skip
    first = results[0]["reference"]
    found = first["faces_by_source"]
    by_source = ", ".join(f"{k} {v}" for k, v in found.items()) if found else "by source: not cached"
    print(f"reference: {results[0]['reference_faces']} faces in {results[0]['reference_frames']} frames "
          f"({by_source})")  # fmt: skip
    for r in results:
        print(f"{r['mode']:9s} leak {100 * r['leak_rate']:.3f}%  ({r['leaked']} uncovered + "
              f"{r['leaked_sharp']} covered but sharp, of {r['reference_faces']} reference faces; "
              f"{r['partly_covered_hidden']} partly covered, no detail left; "
              f"{r['frames']} frames, {r['fps']:.1f} frames/s)")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


def _with_mode(args: argparse.Namespace, mode: str) -> argparse.Namespace:
    copy = argparse.Namespace(**vars(args))
    copy.mode = mode
    return copy


def cmd_privacy(argv: list[str]) -> int:
    """PPAS and the privacy figures over a folder of face photos (one face each, the largest)."""
    import numpy as np

    from engines.evaluation import main_face, read_rgb
    from stream.algorithms.attributes import FaceInput
    from stream.algorithms.privacy import ATTRIBUTES, GlobalDistribution, assess, ppas
    from stream.errors import ConfigError
    from stream.run.job import load_detector, load_estimator

    p = _Parser(
        prog="run_stream.py privacy", description="Attributes, PPAS and k / l / t over a folder of faces."
    )
    p.add_argument("folder", type=Path)
    p.add_argument("--json", type=Path, help="write the selection and figures here")
    p.add_argument("--config", type=Path, help="TOML with a [privacy] policy")
    args = p.parse_args(argv)
    from stream.config import build_config

    config = build_config(args.config)
    photos = sorted(f for f in args.folder.iterdir() if f.suffix.lower() in (".jpg", ".jpeg", ".png", ".bmp"))
    if not photos:
        raise ConfigError(f"folder {args.folder}: no photos (.jpg, .png, .bmp)")
    detector, estimator = load_detector(config), load_estimator(config)
    names, rows = [], []
    for path in photos:
        found = main_face(detector, read_rgb(path))
        if found is None:
            print(f"{path.name}: no face found, left out", file=sys.stderr)
            continue
        padded, face = found
        rows.append(estimator.estimate([FaceInput(padded, face.boxes[0], face.landmarks[0])]).probability[0])
        names.append(path.name)
    if not rows:
        raise ConfigError(f"folder {args.folder}: no face found in any photo")
    distribution = (
        GlobalDistribution.from_csv(Path(config.privacy.distribution))
        if config.privacy.distribution
        else GlobalDistribution.celeba()
    )
    policy = config.privacy.policy()
    seed = config.privacy.seed if config.privacy.seed is not None else secrets.randbits(128)  # never printed
    rngs = [np.random.default_rng([seed, i]) for i in range(len(rows))]
    selection = ppas(np.array(rows), distribution, policy, rngs)
    verdict = assess(selection.released, policy, distribution, config.privacy.stricter())
    f = verdict.figures
    to_k = "impossible" if verdict.to_reach_k is None else len(verdict.to_reach_k)
    print(f"{len(rows)} faces, {f.classes} classes: private {'yes' if verdict.private else 'no'}; "
          f"k={f.k} l={f.l:.3f} t={f.t:.3f} epsilon={verdict.epsilon}; changes to reach "
          f"k={verdict.target.k}: {to_k}, t={verdict.target.t}: {len(verdict.to_reach_t)}")  # fmt: skip
    if args.json:
        selected = [
            {"photo": n, "selected": {a: bool(v) for a, v in zip(ATTRIBUTES, row, strict=True)}}
            for n, row in zip(names, selection.released, strict=True)
        ]
        figures = {"k": f.k, "l": f.l, "t": f.t, "epsilon": verdict.epsilon, "private": verdict.private}
        args.json.write_text(json.dumps({"faces": selected, "figures": figures}, indent=2) + "\n")
    return 0


def cmd_batch(argv: list[str]) -> int:
    from stream.run.batch import expand_inputs, run_batch

    p = _Parser(prog="run_stream.py batch",
                description="Anonymize an archive: many videos over a local process pool or a Ray cluster. "
                            "OUTDIR/manifest.json records each; a rerun skips what is done.")  # fmt: skip
    p.add_argument(
        "inputs", nargs="+", help="video files, globs ('archive/**/*.mp4'), or .txt lists of paths"
    )
    p.add_argument("-o", "--outdir", type=Path, required=True, help="output folder (with manifest.json)")
    p.add_argument("--ray", nargs="?", const="", metavar="ADDRESS",
                   help="run on Ray: a cluster's address, or none for a local one")  # fmt: skip
    p.add_argument("--jobs", type=int, default=0, help="videos at once (0: one per core)")
    p.add_argument("--retries", type=int, default=2, help="attempts after the first for a failed video (2)")
    p.add_argument("--segment-s", type=float, default=0.0,
                   help="cut longer videos into keyframe-aligned segments this long (0: never)")  # fmt: skip
    _add_pipeline_options(p)
    args = p.parse_args(argv)
    config = config_from_args(args)
    if not config.runner.workers:  # one video per core: each pipeline on one detection worker
        import dataclasses

        config = dataclasses.replace(config, runner=dataclasses.replace(config.runner, workers=1))
    outdir = args.outdir.resolve()
    # A folder given as input may hold the output folder: what was written is not input.
    inputs = [i for i in expand_inputs(args.inputs) if outdir not in Path(i).resolve().parents]
    jobs = args.jobs or os.cpu_count() or 1

    from stream.io.redact import scrub

    urls = [a for a in argv if "://" in a]

    def event(kind: str, path: str, entry: dict[str, Any]) -> None:
        detail = entry.get("error") or (
            f"{entry['summary']['frames_out']} frames" if entry.get("summary") else ""
        )
        print(scrub(f"{kind:8s} {path} -> {entry.get('output')} {detail}", *urls), file=sys.stderr)

    result = run_batch(inputs, args.outdir, config, jobs, ray_address=args.ray or None,
                       use_ray=args.ray is not None, retries=args.retries, on_event=event,
                       segment_s=args.segment_s)  # fmt: skip
    print(f"batch: {result.done} done, {result.skipped} already done, {result.failed} failed, "
          f"{result.seconds:.1f} s; manifest {result.manifest}", file=sys.stderr)  # fmt: skip
    return 0 if result.failed == 0 else 4


COMMANDS = {
    "models": cmd_models,
    "leak": cmd_leak,
    "privacy": cmd_privacy,
    "batch": cmd_batch,
    "review": cmd_review,
}


def _stop_on_signals() -> None:
    """SIGTERM (docker stop, systemd, Kubernetes) and SIGHUP (a closed terminal) stop a
    run as Ctrl-C does: reading stops, what is queued is written, the output and
    report are finalized, and the exit code is 128 + the signal (143, 129)."""

    def handler(signum: int, frame: Any) -> None:
        raise Signalled(signum)

    for name in ("SIGTERM", "SIGHUP"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), handler)


def _log_scrubbed(urls: list[str]) -> None:
    """Log lines (warnings and up) to stderr, every one with its secrets masked."""
    from stream.io.redact import ScrubFilter

    logger = logging.getLogger("anonymousnet")
    if not any(isinstance(f, ScrubFilter) for h in logger.handlers for f in h.filters):
        stderr = logging.StreamHandler()
        stderr.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
        logger.addHandler(stderr)
        logger.propagate = False
    for handler in logger.handlers:
        handler.filters = [f for f in handler.filters if not isinstance(f, ScrubFilter)]
        handler.addFilter(ScrubFilter(*urls))


def main(argv: list[str] | None = None) -> int:
    from stream.io.redact import scrub

    argv = list(sys.argv[1:] if argv is None else argv)
    if threading.current_thread() is threading.main_thread():
        _stop_on_signals()
    urls = [a for a in argv if "://" in a]
    _log_scrubbed(urls)
    command = COMMANDS.get(argv[0]) if argv else None
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    try:
        return command(argv[1:]) if command else cmd_anonymize(argv)
    except AnonError as exc:
        print(scrub(f"error: {exc}", *urls), file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt as exc:
        print("error: interrupted", file=sys.stderr)
        return 128 + signal_number(exc)
    except Exception as exc:  # a bug: one line, the traceback only on request
        if debug:
            raise
        print(scrub(f"internal error: {type(exc).__name__}: {exc} (rerun with --debug for details)", *urls),
              file=sys.stderr)  # fmt: skip
        return EXIT_INTERNAL


def console() -> None:
    """The ``anonymousnet`` command that ``pip install .`` makes: ``run_stream.py`` itself."""
    raise SystemExit(main())


if __name__ == "__main__":
    console()
