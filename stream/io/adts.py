"""AAC in ADTS framing (as MPEG-TS carries it) for MP4 and MOV, which want raw AAC frames
and the AudioSpecificConfig in the stream's header."""

from __future__ import annotations

import contextlib
from typing import Any

_MP4 = (".mp4", ".mov", ".m4v")


def is_adts(data: bytes) -> bool:
    return len(data) >= 7 and data[0] == 0xFF and data[1] & 0xF6 == 0xF0


def audio_specific_config(header: bytes) -> bytes | None:
    """The two-byte AudioSpecificConfig that an ADTS frame's header describes, None if
    ``header`` is not one."""
    if not is_adts(header):
        return None
    profile, rate = header[2] >> 6, (header[2] >> 2) & 0xF
    channels = ((header[2] & 1) << 2) | (header[3] >> 6)
    value = ((profile + 1) << 11) | (rate << 7) | (channels << 3)
    return bytes([value >> 8, value & 0xFF])


def without_header(packet: Any) -> Any:
    """``packet`` (av.Packet) without its ADTS header (7 bytes, 9 with a CRC), stamps kept;
    itself if it has none."""
    import av

    data = bytes(packet)
    if not is_adts(data):
        return packet
    raw = av.Packet(data[7 if data[1] & 1 else 9 :])
    raw.pts, raw.dts, raw.time_base, raw.duration = packet.pts, packet.dts, packet.time_base, packet.duration
    return raw


def give_headers(path: str, streams: list[Any]) -> None:
    """Set the codec header of each AAC stream of the file at ``path`` that has none (ADTS),
    read from its first frame, so the stream can be copied into MP4 as raw AAC."""
    import av

    missing = {
        s.index: s
        for s in streams
        if s.codec_context is not None and s.codec_context.name == "aac" and not s.codec_context.extradata
    }
    if not missing:
        return
    # A damaged file is the source's to report: the streams left without a header here
    # are written to an unfragmented file (``sinks.container_options``) or left out.
    with (
        contextlib.suppress(av.error.FFmpegError, OSError),
        av.open(path, metadata_errors="replace") as container,
    ):
        for packet in container.demux([container.streams[i] for i in missing]):
            stream = missing.get(packet.stream.index)
            config = audio_specific_config(bytes(packet)) if stream is not None and packet.size else None
            if stream is not None and config is not None:
                stream.codec_context.extradata = config
                del missing[packet.stream.index]
            if not missing:
                break


def strips_headers(path: str) -> bool:
    """Whether a file at ``path`` wants raw AAC (MP4, MOV)."""
    return path.lower().endswith(_MP4)
