"""Records what a publisher sends: an RTSP server in listen mode (FFmpeg's, through PyAV).

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
    # listen_timeout (seconds) implies the listen flag; PyAV's own open timeout must outlast it.
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
        try:
            for packet in source.demux(*(source.streams[i] for i in streams)):
                if packet.dts is None:
                    continue
                packet.stream = streams[packet.stream.index]
                out.mux(packet)
        except (av.error.FFmpegError, OSError) as exc:
            print(f"session ended: {exc}", file=sys.stderr)
    print("done", flush=True)


if __name__ == "__main__":
    main()
