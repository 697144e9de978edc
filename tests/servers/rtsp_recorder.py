"""Records what a publisher sends: an RTSP server in listen mode (FFmpeg"s, through PyAV).

    python tests/servers/rtsp_recorder.py rtsp://127.0.0.1:PORT/NAME OUT.mkv [--timeout S]

Waits for one publisher (ANNOUNCE, RECORD), copies every packet of its
streams into OUT.mkv, and finalizes the file when the publisher ends the
session or disconnects. Exits 3 if nobody published within the timeout.
"""

import argparse
import sys

import av


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("url")
    p.add_argument("out")
    p.add_argument("--timeout", type=float, default=60.0)
    args = p.parse_args()
    # listen_timeout (seconds) implies the listen flag; PyAV"s own open timeout must outlast it.
    options = {"listen_timeout": str(int(args.timeout))}
    print("listening", flush=True)
    try:
        source = av.open(args.url, options=options, timeout=(args.timeout + 5, 10.0))
    except (av.error.FFmpegError, OSError) as exc:
        print(f"nobody published: {exc}", file=sys.stderr)
        sys.exit(3)
    with source, av.open(args.out, "w") as out:
        streams = {
            s.index: out.add_stream_from_template(s) for s in source.streams if s.type in ("video", "audio")
        }
        # The first packets of a stream come before RTCP has tied its RTP clock
        # to the others, without time stamps: they are held and stamped back
        # from the first stamped packet, one frame (or audio frame) apart.
        pending: dict[int, list] = {i: [] for i in streams}
        try:
            for packet in source.demux(*(source.streams[i] for i in streams)):
                index = packet.stream.index
                if not packet.size:
                    continue
                if packet.pts is None:
                    pending[index].append(packet)
                    continue
                if packet.dts is None:
                    packet.dts = packet.pts
                held, pending[index] = pending[index], []
                step = _step(source.streams[index])
                for back, early in enumerate(reversed(held), start=1):
                    early.pts = early.dts = packet.dts - back * step
                for p in [*held, packet]:
                    p.stream = streams[index]
                    out.mux(p)
        except (av.error.FFmpegError, OSError) as exc:
            print(f"session ended: {exc}", file=sys.stderr)
    print("done", flush=True)


def _step(stream: av.stream.Stream) -> int:
    """One frame's duration in the stream's time base."""
    assert stream.time_base is not None
    if isinstance(stream, av.AudioStream):  # stream.type == "audio"
        sample_rate = stream.codec_context.sample_rate or 48000
        return max(1, round(1024 / sample_rate / stream.time_base))  # an AAC frame
    rate = stream.average_rate or stream.guessed_rate or 30
    return max(1, round(1 / (rate * stream.time_base)))


if __name__ == "__main__":
    main()
