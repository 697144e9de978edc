"""One frozen, typed config tree, built at the edge from a TOML file and CLI flags.

Each stage receives only its own section. Validation names the field and its
valid range (``detect.min_face: expected 4..512, got 2``).

Over 400 lines: every section of the config tree, each field declared once with
its range (``bounded``), and the TOML / flag parsing that builds it.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_type_hints

from stream.algorithms.privacy import Policy
from stream.errors import ConfigError


@dataclass(frozen=True)
class Flag:
    """A config field's command-line flag; ``run_stream.py`` makes every flag from these.

    ``names`` as typed (the first is the flag, the rest aliases), the help line (the field's
    default is appended unless ``show_default`` is off), the help group (one of ``GROUPS``);
    ``negative``: the flag and help that set a bool back to False, where its default (None)
    means "decided from the input".
    """

    names: tuple[str, ...]
    help: str
    group: str
    negative: tuple[str, str] | None = None
    show_default: bool = True


OBSCURING, DETECTION, IO, PRIVACY = GROUPS = (
    "obscuring", "detection and tracking", "input and output", "attributes and privacy",
)  # fmt: skip


def flag(*names: str, help: str, group: str, negative: tuple[str, str] | None = None,
         show_default: bool = True) -> dict[str, Flag]:  # fmt: skip
    """Field metadata declaring a command-line flag (for ``bounded`` and ``flagged``)."""
    return {"flag": Flag(names, help, group, negative, show_default)}


def bounded(default: Any, lo: float | str, hi: float | str, cli: dict[str, Flag] | None = None) -> Any:
    """A field's default and its valid range, declared once beside it; ``lo`` or ``hi`` may
    name another field of the section (a maximum at least its minimum). ``check_ranges``
    reads it; ``cli`` (``flag(...)``) gives it a command-line flag."""
    return dataclasses.field(default=default, metadata={"range": (lo, hi)} | (cli or {}))


def flagged(default: Any, cli: dict[str, Flag]) -> Any:
    """A field without a range, with a command-line flag (``flag(...)``)."""
    return dataclasses.field(default=default, metadata=cli)


def check_ranges(section_config: Any, section: str) -> None:
    """Every ``bounded`` field of a section within its range, or ConfigError naming it."""
    for f in dataclasses.fields(section_config):
        if "range" not in f.metadata:
            continue
        lo, hi = (getattr(section_config, v) if isinstance(v, str) else v for v in f.metadata["range"])
        _range(f"{section}.{f.name}", getattr(section_config, f.name), lo, hi)


ObscureMode = Literal["blur", "pixelate", "mask", "synth"]
FallbackMode = Literal["blur", "pixelate", "mask"]
MaskShape = Literal["ellipse", "box"]
FailPolicy = Literal["mask", "stop"]
BackendName = Literal["auto", "cpu", "cuda", "tensorrt", "torch-cuda", "torch-cpu"]
RtspTransport = Literal["tcp", "udp"]
HwDecode = Literal["auto", "off", "cuda", "vaapi", "qsv", "videotoolbox", "d3d11va"]
Precision = Literal["fp16", "fp32", "int8"]
DeviceFrames = Literal["auto", "on", "off"]


@dataclass(frozen=True)
class SourceConfig:
    """How inputs are opened.

    live: None decides from the input (URLs, cameras and inputs read at
    their own pace with ``realtime`` are live; files are not).
    timeout_s: open and read timeout for network inputs.
    reconnect_attempts: a live network input that ends or breaks is opened
    again, waiting ``reconnect_backoff_s`` before the first attempt and
    doubling up to ``reconnect_backoff_max_s``; after this many failed
    attempts in a row the run ends with an error (0: never reconnect).
    realtime: read a file (or ``lavfi:`` source) at its own pace, as a
    camera delivers frames (FFmpeg's ``-re``); None (the default) does so
    only when the output is ``rtsp://``, which a viewer watches at the
    stream's own rate (faster, the server drops frames). loop: start a file again at
    its end, time stamps continuing (a simulated camera, with ``realtime``).
    hw_decode: decode video on a hardware device through FFmpeg (PyAV's
    ``HWAccel``; frames come back to host memory). ``auto``: CUDA where the
    loaded FFmpeg has it and an NVIDIA device is present; a device that
    cannot open the input is reported once and the input decoded on the CPU,
    so it is never required.
    """

    live: bool | None = flagged(
        None,
        flag(
            "--live",
            help="treat input as live",
            group=IO,
            show_default=False,
            negative=("--no-live", "treat input as a file"),
        ),
    )
    timeout_s: float = bounded(
        10.0, 0.1, 3600, flag("--timeout", help="network open/read timeout, s", group=IO)
    )
    rtsp_transport: RtspTransport = flagged("tcp", flag("--rtsp-transport", help="RTSP transport", group=IO))
    camera_width: int = bounded(0, 0, 16384)
    camera_height: int = bounded(0, 0, 16384)
    camera_fps: float = bounded(0.0, 0, 1000)
    reconnect_attempts: int = bounded(
        10,
        0,
        10**6,
        flag(
            "--reconnect-attempts",
            help="failed reconnections in a row before a lost live input stops",
            group=IO,
        ),
    )
    reconnect_backoff_s: float = bounded(0.5, 0.0, 3600)
    reconnect_backoff_max_s: float = bounded(8.0, "reconnect_backoff_s", 3600)
    realtime: bool | None = flagged(
        None,
        flag(
            "--realtime",
            help="read a file or lavfi: input at its own pace, like a camera "
            "(the default for an rtsp:// output)",
            group=IO,
            show_default=False,
            negative=("--no-realtime", "read as fast as possible, also for an rtsp:// output"),
        ),
    )
    loop: bool = flagged(
        False,
        flag(
            "--loop",
            help="start a file again at its end (a simulated camera, with --realtime)",
            group=IO,
            show_default=False,
        ),
    )

    hw_decode: HwDecode = flagged(
        "auto", flag("--hw-decode", help="hardware video decoding (auto: CUDA where present)", group=IO)
    )

    def validate(self) -> None:
        check_ranges(self, "source")


@dataclass(frozen=True)
class DetectConfig:
    """Face detection (CenterFace).

    min_face: height in pixels of the smallest face to find. The frame is
    resized for detection so that such a face reaches the detector's
    reliable size (``model_min_face``, 16 px for CenterFace on real video):
    the default 16 detects at the native resolution; ``min_face = 10``
    upscales 1.6x and finds 10 px faces.
    max_side: cap on the detection image's long side (0: no cap); a cap
    trades small-face recall for speed on very large frames.
    threshold: lowest score kept (the tracker's low threshold).
    precision, calibration_table: TensorRT engine precision; ``int8`` needs the
    table written by ``python -m calibration.int8``.
    threads: inference threads per call (0: every core); the runner already
    runs one call per core on different frames, so 1 is fastest on a CPU.
    every: full-resolution detection on one frame in ``every``; the frames
    between get a pass at ``inter_scale`` times that resolution (0: none,
    the tracker predicts), which still catches new large faces and cuts.
    threshold: on crowd footage (MOT20-08) CenterFace scores most faces of
    12-16 px between 0.1 and 0.3 at native resolution; 0.08 finds 97% of those
    the reference finds upscaled, at the price of blurring some shirts and
    patterns too (a face left is worse than a pattern blurred).
    device_frames: the GPU frame path. Each frame is uploaded once to the
    detector's device; resizing, detection's thresholding and the obscuring
    of every region run there, the synthesized faces' windows are copied in,
    and the frame comes back once for encoding. ``auto``: on when the backend
    is torch on CUDA (``torch-cuda``); ``on`` needs a torch backend
    (``torch-cpu`` runs the same path on the CPU, for checking it).
    """

    backend: str = flagged(
        "cpu",
        flag(
            "--backend",
            help="inference backend: auto, cpu, cuda, tensorrt, torch-cuda, torch-cpu, triton://HOST:PORT, "
            "tritons://HOST:PORT (TLS)",
            group=DETECTION,
        ),
    )
    precision: Precision = "fp16"
    calibration_table: str = ""
    threads: int = bounded(
        1, 0, 256, flag("--threads", help="inference threads per call (0: all cores)", group=DETECTION)
    )
    min_face: int = bounded(
        16,
        4,
        512,
        flag(
            "--min-face",
            help="smallest face height to find, px (under 16 upscales the frame)",
            group=DETECTION,
        ),
    )
    model_min_face: float = bounded(16.0, 4, 64)
    max_side: int = bounded(0, 0, 16384)
    threshold: float = bounded(
        0.08, 0.01, 0.99, flag("--threshold", help="lowest detection score kept", group=DETECTION)
    )
    nms_iou: float = bounded(0.3, 0.05, 0.95)
    every: int = bounded(2, 1, 60)
    inter_scale: float = bounded(0.5, 0.0, 1.0)
    device_frames: DeviceFrames = flagged(
        "auto",
        flag(
            "--device-frames",
            help="keep frames on the detector's GPU (auto: with torch-cuda)",
            group=DETECTION,
        ),
    )

    def validate(self) -> None:
        check_ranges(self, "detect")
        if self.precision == "int8" and not self.calibration_table:
            raise ConfigError(
                "detect.calibration_table: int8 needs a calibration table (python -m calibration.int8)"
            )
        if self.backend not in get_args(BackendName) and not self.backend.startswith(
            ("triton://", "tritons://")
        ):
            raise ConfigError(
                f"detect.backend: expected one of {', '.join(get_args(BackendName))} or triton://HOST:PORT "
                f"(tritons:// for TLS), "
                f"got {self.backend!r}"
            )
        if 0 < self.max_side < 64:
            raise ConfigError(f"detect.max_side: expected 0 or 64..16384, got {self.max_side}")


@dataclass(frozen=True)
class TrackConfig:
    """ByteTrack-style tracking and coasting.

    high_threshold: detections at or above it take part in the first
    association and may start tracks; lower ones (down to
    ``detect.threshold``) only extend existing tracks.
    coast_frames: frames a lost track keeps being obscured at its predicted
    position. margin: fraction of the box size added on each side, and at
    least ``min_margin_px`` pixels: on a 14 px face a quarter is 3.5 px, less
    than two detectors' boxes of the same face differ by.
    coast_growth: extra margin per coasted frame, for motion uncertainty (a
    small face in a crowd is found on full-resolution frames only, one in
    ``detect.every``, and coasts in between).
    """

    high_threshold: float = bounded(0.12, 0.01, 0.99)
    new_track_threshold: float = bounded(0.12, 0.01, 0.99)
    match_iou: float = bounded(0.2, 0.01, 0.99)
    low_match_iou: float = bounded(0.4, 0.01, 0.99)
    coast_frames: int = bounded(
        15,
        0,
        10000,
        flag(
            "--coast-frames", help="frames a lost face stays hidden at its predicted place", group=DETECTION
        ),
    )
    margin: float = bounded(
        0.25, 0.0, 2.0, flag("--margin", help="box dilation per side, fraction of size", group=DETECTION)
    )
    min_margin_px: float = bounded(4.0, 0.0, 256.0)
    coast_growth: float = bounded(0.15, 0.0, 1.0)

    def validate(self) -> None:
        check_ranges(self, "track")


@dataclass(frozen=True)
class ObscureConfig:
    """How faces are hidden.

    strength: blur sigma, or pixel block size, as a fraction of the face
    width (blur: sigma = strength * width; pixelate: block = strength * width);
    0 takes the mode's own: an eighth for blur, a third for pixelate (finer
    blocks keep the face's layout: at an eighth, three faces in four of the
    hamilton clip keep a detail the leak measure sees, see stream/measure/leak.py).
    min_px: a floor to both in pixels: on a 16 px face an eighth of the width
    is a 2 px blur, which leaves sunglasses, a mouth and a hairline readable.
    colour: RGB of the mask, and of whole-frame masks under the fail policy.
    """

    mode: ObscureMode = flagged("synth", flag("--mode", help="how faces are hidden", group=OBSCURING))
    shape: MaskShape = flagged("ellipse", flag("--shape", help="shape of the hidden region", group=OBSCURING))
    strength: float = flagged(
        0.0,
        flag(
            "--strength",
            help="blur sigma / pixel block as a fraction of face width "
            "(0: the mode's own, blur 0.125, pixelate 1/3)",
            group=OBSCURING,
            show_default=False,
        ),
    )
    min_px: float = bounded(5.0, 0.0, 256.0)
    colour: tuple[int, int, int] = flagged(
        (0, 0, 0), flag("--colour", "--color", help="mask colour R,G,B", group=OBSCURING)
    )

    def strength_of(self, mode: str) -> float:
        """The strength ``mode`` is drawn with: ``strength``, or that mode's own."""
        return self.strength or (1 / 3 if mode == "pixelate" else 0.125)

    def validate(self) -> None:
        check_ranges(self, "obscure")
        if self.strength:
            _range("obscure.strength", self.strength, 0.01, 1.0)
        if len(self.colour) != 3 or not all(0 <= int(c) <= 255 for c in self.colour):
            raise ConfigError(f"obscure.colour: expected three values 0..255, got {self.colour}")


@dataclass(frozen=True)
class SynthConfig:
    """Stage III (mode ``synth``): k-Same-Select surrogate faces.

    gallery: a gallery file (python -m calibration.gallery), ``builtin`` for
    the one set-up builds from the photos pinned in calibration/gallery.py,
    or empty for none; surrogates also come from the other people of the same
    stream. k: distinct identities averaged into a surrogate made from the
    stream's own people (a gallery file carries its own k). fallback: how
    faces without a surrogate (too small, too turned, not yet described,
    fewer than k matching) are hidden. min_face: smallest face height in
    pixels that is replaced. min_cover: the share of the face (ellipse of its
    detected box) the face's mesh must cover, else the face falls back too.
    surround_blur: blur of the head around the surrogate (hair, ears, jaw line
    inside the track's box), as a fraction of the box width (0: none, the
    default: a blurred oval head is what a viewer sees first, and on video it
    bought no privacy against an attacker the stream does not use). reshape: how far the face's
    mesh is moved toward the mean face layout (0: not at all, 1: onto it, above 1:
    past it, away from the person's own; geometry identifies a person most).
    own_eyes: the person's own eyes show through the surrogate (gaze and blinks;
    they also identify). keep_tone: the share of the person's own mean skin tone
    in the relit surrogate (1: theirs, 0: the surrogate's; tone helps identify,
    and hides the seam). stargan: a StarGAN
    generator checkpoint (``run_stream.py models --stargan``) that directs the
    surrogate to the five attributes PPAS selected, once per track; empty: none.
    max_likeness: the highest cosine allowed between the identity descriptor of
    the replaced face and the person's own, checked when a track's surrogate is
    chosen: candidates are tried at the configured settings and then stronger
    ones (more reshape, none of their tone, more surround blur) until one stays
    below it; a track none does falls back (``recognisable``). 1: no check.
    max_lead: how far that cosine may also stand above the highest cosine of any
    other person known (the gallery's members, the stream's other tracks): a
    recognizer ranks people, so a face is safe when someone else scores about as
    well as the person does. 2: no limit. Of the candidates that pass at the
    weakest strength, the one least like the person is kept.
    """

    gallery: str = flagged(
        "builtin",
        flag(
            "--gallery",
            help="k-Same gallery for --mode synth: a file (python -m calibration.gallery), builtin, "
            "or '' for the stream's own people only",
            group=OBSCURING,
        ),
    )
    k: int = bounded(4, 2, 100)
    fallback: FallbackMode = "blur"
    min_face: int = bounded(20, 8, 4096)
    min_cover: float = bounded(0.75, 0.0, 1.0)
    surround_blur: float = bounded(0.0, 0.0, 1.0)
    reshape: float = bounded(1.6, 0.0, 2.0)
    own_eyes: bool = False
    keep_tone: float = bounded(1.0, 0.0, 1.0)
    stargan: str = flagged(
        "",
        flag(
            "--stargan",
            help="StarGAN generator (run_stream.py models --stargan) that directs surrogates "
            "to the selected attributes",
            group=OBSCURING,
            show_default=False,
        ),
    )
    max_likeness: float = bounded(0.6, -1.0, 1.0)
    max_lead: float = bounded(0.05, -2.0, 2.0)

    def validate(self) -> None:
        check_ranges(self, "synth")


@dataclass(frozen=True)
class PerturbConfig:
    """Stage IV: a small perturbation added to each replaced face against recognizers.

    mode: ``none``; ``uap``, the universal adversarial perturbation in ``file``
    (python -m calibration.uap fit), scaled by ``epsilon`` (1: as fitted); or
    ``noise``, Gaussian noise of ``sigma`` grey levels with one pattern per
    track (from ``seed`` and the track id), so it does not flicker. Both follow
    the face's mesh. Needs ``obscure.mode = synth``: obscured faces carry no
    face to perturb.
    """

    mode: Literal["none", "uap", "noise"] = flagged(
        "none",
        flag(
            "--perturb",
            help="Stage IV on replaced faces: a universal adversarial perturbation, or noise",
            group=OBSCURING,
        ),
    )
    file: str = flagged(
        "",
        flag(
            "--perturbation",
            help="perturbation file for --perturb uap (python -m calibration.uap fit)",
            group=OBSCURING,
            show_default=False,
        ),
    )
    epsilon: float = bounded(1.0, 0.0, 4.0)
    sigma: float = bounded(3.0, 0.0, 64.0)
    seed: int = 0

    def validate(self) -> None:
        check_ranges(self, "perturb")
        if self.mode == "uap" and not self.file:
            raise ConfigError(
                "perturb.file: mode uap needs a perturbation file (python -m calibration.uap fit)"
            )


@dataclass(frozen=True)
class SinkConfig:
    """Output encoding.

    codec: any encoder PyAV's FFmpeg has (libx264 by default).
    crf: constant-rate-factor quality (lower is better). preset: x264 preset.
    For ``rtsp://`` outputs: rtsp_transport, timeout_s (connect and socket
    timeout), keyint_s (key frame interval, so a viewer joining or a
    reconnect starts soon), the backoff between reconnection attempts, and
    connect_attempts: failed connections in a row before the output gives up
    and the run ends with an output error (0: retry for ever).
    fragment_s: MP4/MOV fragment length, so a killed run leaves a playable
    file up to its last fragment (0: a plain MP4, lost if the run is killed).
    segment_s: start a new file every this many seconds of stream time,
    ``NAME_000.mp4``, ``NAME_001.mp4``, ... (0: one file).
    """

    codec: str = flagged("libx264", flag("--codec", help="video encoder", group=IO))
    crf: int = bounded(20, 0, 51, flag("--crf", help="encoder quality, lower is better", group=IO))
    preset: str = flagged("veryfast", flag("--preset", help="x264 preset", group=IO))
    pix_fmt: str = "yuv420p"
    image_format: str = "png"
    x264_params: str = ""  # passed to libx264 as is, e.g. "bframes=0"
    rtsp_transport: RtspTransport = "tcp"
    timeout_s: float = bounded(5.0, 0.1, 3600)
    keyint_s: float = bounded(1.0, 0.04, 60)
    reconnect_backoff_s: float = bounded(0.5, 0.0, 3600)
    reconnect_backoff_max_s: float = bounded(8.0, "reconnect_backoff_s", 3600)
    connect_attempts: int = bounded(10, 0, 1_000_000)
    fragment_s: float = bounded(0.5, 0.0, 3600)
    segment_s: float = bounded(
        0.0,
        0.0,
        24 * 3600,
        flag(
            "--segment-time",
            help="a new output file every this many seconds, NAME_000.mp4, ... (0: one file)",
            group=IO,
        ),
    )

    def validate(self) -> None:
        check_ranges(self, "sink")
        presets = "ultrafast superfast veryfast faster fast medium slow slower veryslow placebo".split()
        if self.codec in ("libx264", "libx265") and self.preset not in presets:
            raise ConfigError(f"sink.preset: expected one of {presets}, got {self.preset!r}")
        if self.image_format not in ("png", "jpg", "bmp", "tiff"):
            raise ConfigError(f"sink.image_format: expected png, jpg, bmp or tiff, got {self.image_format!r}")


@dataclass(frozen=True)
class AttributesConfig:
    """Stage I: per-track attribute estimation (see stream/algorithms/attributes.py).

    enabled: estimate attributes and run PPAS for every track (needed by face
    replacement; otherwise for the privacy report). every: frames between two
    estimates of a track; refine_per_frame: at most this many tracks already
    described are estimated again on one frame (new tracks always are; a crowd's
    refinements are spread over frames). A track freezes after ``min_estimates``
    once every estimated attribute is at least ``freeze_confidence`` (2|p - 0.5|) sure,
    or after ``max_estimates``. hysteresis: how far past 0.5 a fused
    probability must move to change a decision. forest: a trained
    random-forest model (calibration/attribute_forest.py), or "".
    min_face: detected faces shorter than this (px) are not described: the
    estimators read nothing from them, and on crowd footage most of the
    detector's low-score finds are there.
    release: when PPAS releases a track's attributes: ``first``, on its first
    frame (from the first estimate; a face too small to describe is released
    as unestimated), so its surrogate is drawn from that frame on and later
    estimates refine only the report; ``frozen``, once the track freezes.
    """

    enabled: bool = flagged(
        False,
        flag(
            "--attributes",
            help="estimate every track's attributes; report privacy figures (PPAS)",
            group=PRIVACY,
            show_default=False,
        ),
    )
    every: int = bounded(2, 1, 1000)
    refine_per_frame: int = bounded(2, 0, 1000)
    min_face: int = bounded(24, 0, 4096)
    hysteresis: float = bounded(0.1, 0.0, 0.5)
    freeze_confidence: float = bounded(0.5, 0.0, 1.0)
    min_estimates: int = bounded(3, 1, 1000)
    max_estimates: int = bounded(5, "min_estimates", 10000)
    forest: str = ""
    release: Literal["first", "frozen"] = "first"

    def validate(self) -> None:
        check_ranges(self, "attributes")


@dataclass(frozen=True)
class PrivacyConfig(Policy):
    """Stage II: the policy (``stream.algorithms.privacy.Policy``: quasi-identifiers, sensitive and
    preserved attributes, targets k, l, t, epsilon) and how it is applied: the global
    distribution (a CSV of counts, or "" for CelebA's); seed: of the per-track
    randomized response, None (the default) for a secret drawn from the OS
    each run and never written anywhere; a set seed makes runs reproducible
    (for tests) but lets whoever knows it undo the noise, which the report
    says; report_original: also write original attribute values to the report
    (off: only confidences and the released values); stricter_k, stricter_t: the
    stricter target whose required changes the report lists (default k + 1 and t / 2)."""

    distribution: str = ""
    seed: int | None = None
    report_original: bool = flagged(
        False,
        flag(
            "--report-original-attributes",
            help="also write original attribute values to the report",
            group=PRIVACY,
            show_default=False,
        ),
    )
    stricter_k: int = 0
    stricter_t: float = -1.0

    def policy(self) -> Policy:
        return Policy(**{f.name: getattr(self, f.name) for f in dataclasses.fields(Policy)})

    def stricter(self) -> Policy:
        """The target of "can it be more private": k + 1 and t / 2 unless set."""
        return dataclasses.replace(
            self.policy(),
            k=self.stricter_k or self.k + 1,
            t=self.stricter_t if self.stricter_t >= 0 else self.t / 2,
        )

    def validate(self) -> Policy:
        self.stricter().validate()
        return self.policy().validate()


@dataclass(frozen=True)
class RunnerConfig:
    """Threads, queues and the fail policy.

    on_failure: ``mask`` emits a frame whose stage failed fully masked and
    goes on; ``stop`` ends the run with an error. Either way no raw frame is
    written. workers: threads running detection on several frames at once
    (0: one per core, at most 4); tracking and obscuring stay in frame order.
    live_queue_size: frames a live input may have waiting for detection; when
    the machine falls behind, the oldest are dropped, so this bounds the
    latency (queue_size applies to files, which never drop).
    """

    queue_size: int = bounded(8, 1, 1024)
    live_queue_size: int = bounded(2, 1, 1024)
    on_failure: FailPolicy = flagged(
        "mask", flag("--on-failure", help="when a stage fails on a frame", group=IO)
    )
    max_frames: int = bounded(
        0, 0, 10**9, flag("--max-frames", help="stop after this many input frames (0: all)", group=IO)
    )
    workers: int = bounded(
        0, 0, 64, flag("--workers", help="frames detected at once (0: one per core)", group=DETECTION)
    )

    def validate(self) -> None:
        check_ranges(self, "runner")


@dataclass(frozen=True)
class ReviewConfig:
    """The review page (``--review DIR``).

    originals: the page also shows the original face beside each thumbnail (for
    reviewers allowed to see them; it says so in large type); the default page holds
    no raw face. every_min: a live run's page is rewritten this often while it runs
    (and once at the end). low_confidence: detections scored under it are frames to
    check. near_min_face: faces under this multiple of ``detect.min_face`` tall are
    frames to check. checks: frames to check kept with thumbnails (the highest ranked);
    filmstrip: thumbnails of each track's anonymized face over its life.
    """

    originals: bool = flagged(
        False,
        flag(
            "--review-originals",
            group=IO,
            help="the review page shows original faces too (say who may see it)",
        ),
    )
    every_min: float = bounded(
        5.0,
        0.05,
        1440.0,
        flag("--review-every", group=IO, help="a live run's review page is rewritten every N min"),
    )
    low_confidence: float = bounded(0.3, 0.0, 1.0)
    near_min_face: float = bounded(1.5, 1.0, 10.0)
    checks: int = bounded(60, 1, 10_000)
    filmstrip: int = bounded(8, 1, 64)

    def validate(self) -> None:
        check_ranges(self, "review")


@dataclass(frozen=True)
class Config:
    source: SourceConfig = field(default_factory=SourceConfig)
    detect: DetectConfig = field(default_factory=DetectConfig)
    track: TrackConfig = field(default_factory=TrackConfig)
    obscure: ObscureConfig = field(default_factory=ObscureConfig)
    sink: SinkConfig = field(default_factory=SinkConfig)
    runner: RunnerConfig = field(default_factory=RunnerConfig)
    attributes: AttributesConfig = field(default_factory=AttributesConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    synth: SynthConfig = field(default_factory=SynthConfig)
    perturb: PerturbConfig = field(default_factory=PerturbConfig)
    review: ReviewConfig = field(default_factory=ReviewConfig)

    def validate(self) -> Config:
        for f in dataclasses.fields(self):
            getattr(self, f.name).validate()
        if self.perturb.mode != "none" and self.obscure.mode != "synth":
            raise ConfigError(
                f"perturb.mode = {self.perturb.mode}: needs obscure.mode = synth "
                f"(with {self.obscure.mode} there is no face left to perturb)"
            )
        return self


@dataclass(frozen=True)
class FlagField:
    """A config field with a command-line flag: where it lives, its flag, type and default."""

    section: str
    name: str
    flag: Flag
    hint: Any
    default: Any

    @property
    def dest(self) -> str:
        return f"{self.section}.{self.name}"


def flag_fields() -> list[FlagField]:
    """Every config field with a command-line flag, by help group, then in config order."""
    found = []
    for section in dataclasses.fields(Config):
        kind = section.default_factory
        hints = get_type_hints(kind)
        for f in dataclasses.fields(kind):  # type: ignore[arg-type]
            if "flag" in f.metadata:
                found.append(FlagField(section.name, f.name, f.metadata["flag"], hints[f.name], f.default))
    return sorted(found, key=lambda f: GROUPS.index(f.flag.group))


def _range(name: str, value: float, lo: float, hi: float) -> None:
    if not lo <= value <= hi:
        raise ConfigError(f"{name}: expected {lo}..{hi}, got {value}")


def _coerce(name: str, hint: Any, value: Any) -> Any:  # noqa: C901 - one branch per field type
    """Check ``value`` against a field's type hint, converting ints to floats and lists to tuples."""
    origin = getattr(hint, "__origin__", None)
    if origin is Literal:
        allowed = get_args(hint)
        if value not in allowed:
            raise ConfigError(f"{name}: expected one of {list(allowed)}, got {value!r}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{name}: expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{name}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{name}: expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{name}: expected a string, got {value!r}")
        return value
    if origin is tuple:
        element = get_args(hint)[0]
        if element is str:
            if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
                raise ConfigError(f"{name}: expected a list of names, got {value!r}")
            return tuple(value)
        if not isinstance(value, list | tuple) or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in value
        ):
            raise ConfigError(f"{name}: expected a list of integers, got {value!r}")
        return tuple(value)
    args = get_args(hint)
    if type(None) in args:  # Optional[X]
        if value is None:
            return None
        inner = next(a for a in args if a is not type(None))
        return _coerce(name, inner, value)
    raise ConfigError(f"{name}: unsupported option type")  # pragma: no cover


def _section(cls: type, name: str, values: dict[str, Any]) -> Any:
    if not isinstance(values, dict):
        raise ConfigError(f"{name}: expected a table of options, got {values!r}")
    hints = get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"{name}.{unknown[0]}: unknown option (known: {', '.join(sorted(known))})")
    return cls(**{k: _coerce(f"{name}.{k}", hints[k], v) for k, v in values.items()})


def load_toml(path: Path, what: str) -> dict[str, Any]:
    """A TOML file's tree, or a ConfigError naming ``what`` and the problem."""
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{what} {path}: not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{what} {path}: not valid TOML ({exc})") from None


def parse_option(text: str) -> tuple[str, str, Any]:
    """``SECTION.KEY=VALUE`` (a command line's ``--set``), the value read as TOML
    (numbers, booleans, quoted strings; anything else is a plain string)."""
    key, sep, value = text.partition("=")
    section, dot, name = key.strip().partition(".")
    if not sep or not dot or not section or not name:
        raise ConfigError(f"--set {text}: expected SECTION.KEY=VALUE, e.g. source.reconnect_attempts=20")
    try:
        parsed = tomllib.loads(f"v = {value.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        parsed = value.strip()
    return section, name.strip(), parsed


# Named starting points for a kind of use, below a config file and flags.
PROFILES: dict[str, dict[str, dict[str, Any]]] = {
    # One large face from a local camera: detection at a fifth of the resolution (faces from
    # 80 px), attributes read a few times and then left (the surrogate is chosen on the
    # first frame; later estimates only refine the report).
    "webcam": {
        "detect": {"min_face": 80},
        "attributes": {"every": 6, "min_estimates": 2, "max_estimates": 3},
        "source": {"live": True},
        # x264's fastest preset: at 720p "veryfast" takes 18 ms a frame of two cores' 66.
        "sink": {"preset": "ultrafast"},
        # One detection worker and one frame waiting: a backlog (the first frames, while the
        # surrogate is chosen) is dropped rather than drained over seconds.
        "runner": {"workers": 1, "live_queue_size": 1},
    },
}


def build_config(file: Path | None = None, overrides: dict[str, dict[str, Any]] | None = None,
                 profile: str | None = None) -> Config:  # fmt: skip
    """The validated config from a ``profile`` (``PROFILES``), then an optional TOML file, then
    CLI overrides on top.

    ``overrides`` maps section name to ``{option: value}``.
    """
    if profile is not None and profile not in PROFILES:
        raise ConfigError(f"profile {profile!r}: unknown (known: {', '.join(sorted(PROFILES))})")
    tree: dict[str, dict[str, Any]] = {s: dict(v) for s, v in PROFILES.get(profile or "", {}).items()}
    for section, values in (load_toml(file, "config file") if file is not None else {}).items():
        tree.setdefault(section, {}).update(values)
    for section, values in (overrides or {}).items():
        tree.setdefault(section, {}).update(values)
    hints = get_type_hints(Config)
    sections = {f.name for f in dataclasses.fields(Config)}
    unknown = sorted(set(tree) - sections)
    if unknown:
        raise ConfigError(f"{unknown[0]}: unknown config section (known: {', '.join(sorted(sections))})")
    built = {name: _section(hints[name], name, values) for name, values in tree.items()}
    return Config(**built).validate()
