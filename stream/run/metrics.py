"""Prometheus metrics of running streams, read from their counters when scraped.

Nothing on the frame path is instrumented: the runner, the source and the
sink already count everything, and a collector turns those counters into
metrics (per stream, label ``stream``) each time the endpoint is scraped.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any, Protocol

from stream.io.redact import display_url
from stream.io.sinks import Publishing
from stream.run.runner import LATENCY_BUCKETS, Runner
from stream.stages import SynthStage, TrackStage


class Observed(Protocol):
    """What the collector reads of a stream: a ``Runner``, or a worker process's stream
    as its parent sees it (``processes.RemoteRunner``)."""

    stats: Any
    source: Any
    sink: Any
    stages: Any


class StreamsCollector:
    """A Prometheus collector over the runners of named streams (added as they start)."""

    def __init__(self) -> None:
        self._runners: dict[str, Observed | Runner] = {}
        self._lock = threading.Lock()

    def add(self, name: str, runner: Observed | Runner) -> None:
        with self._lock:
            self._runners[display_url(name)] = runner  # a label is public: no secret in it

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        def counter(name: str, doc: str) -> Any:
            return CounterMetricFamily(f"anonymousnet_{name}", doc, labels=["stream"])

        frames = CounterMetricFamily(
            "anonymousnet_frames", "Video frames, by what happened to them", labels=["stream", "kind"]
        )
        faces = counter("faces_detected", "Face detections")
        tracks = GaugeMetricFamily("anonymousnet_tracks", "Tracks started so far", labels=["stream"])
        reconnects = counter("input_reconnects", "Times a lost live input was opened again")
        published = counter("published_frames", "Frames sent to an RTSP server")
        publish_dropped = counter("publish_dropped_frames", "Frames an RTSP output could not send")
        publish_reconnects = counter("publish_reconnects", "Times an RTSP output connected again")
        fallbacks = counter("synth_fallbacks", "Faces obscured because no surrogate could replace them")
        cuts = counter("scene_cuts_redetected", "Scene cuts given a full-resolution detection")
        latency = HistogramMetricFamily(
            "anonymousnet_latency_seconds", "Capture to write (or publish) time per frame", labels=["stream"]
        )
        with self._lock:
            runners = list(self._runners.items())
        for name, runner in runners:
            s = runner.stats
            for kind, value in (
                ("in", s.frames_in),
                ("out", s.frames_out),
                ("dropped", s.frames_dropped),
                ("masked_whole", s.frames_masked_whole),
            ):
                frames.add_metric([name, kind], value)
            faces.add_metric([name], s.faces)
            tracks.add_metric([name], s.max_track_id)
            reconnects.add_metric([name], runner.source.stats.reconnects)
            publish = runner.sink.stats if isinstance(runner.sink, Publishing) else None
            if publish is not None:
                published.add_metric([name], publish.frames_published)
                publish_dropped.add_metric([name], publish.frames_dropped)
                publish_reconnects.add_metric([name], publish.reconnects)
            for stage in runner.stages:
                if isinstance(stage, SynthStage):
                    fallbacks.add_metric([name], sum(stage.counts.fallback.values()))
                if isinstance(stage, TrackStage):
                    cuts.add_metric([name], stage.cuts_redetected)
            cumulative, buckets = 0, []
            for bound, count in zip((*LATENCY_BUCKETS, float("inf")), s.latency_counts, strict=True):
                cumulative += count
                buckets.append((str(bound) if bound != float("inf") else "+Inf", cumulative))
            latency.add_metric([name], buckets, s.latency_sum)
        yield from (frames, faces, tracks, reconnects, published, publish_dropped, publish_reconnects)
        yield from (fallbacks, cuts, latency)


def serve(port: int, collector: StreamsCollector, address: str = "127.0.0.1") -> Any:
    """Start the ``/metrics`` endpoint on ``port`` (a thread of its own); returns the server.

    Loopback only unless ``address`` says otherwise (``--metrics-host 0.0.0.0``
    for a scraper on another machine): the counters tell who is on camera when."""
    from prometheus_client import CollectorRegistry, start_http_server

    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    server, _ = start_http_server(port, addr=address, registry=registry)
    return server
