"""A GStreamer RTSP server for the live-stream tests, on loopback.

Runs under Debian's own ``/usr/bin/python3`` (python3-gi and
gir1.2-gst-rtsp-server-1.0), not the project's virtual environment:

    /usr/bin/python3 tests/servers/rtsp_server.py --port 8554 [--clip FILE]

Mounts ``/live`` (a moving test pattern, 640x360 at 30 fps, H.264, with a
sine tone as AAC) and, with ``--clip``, ``/clip`` (an MP4 with H.264 video
and AAC audio, sent in real time without re-encoding). Prints ``ready`` on
stdout once it listens; runs until killed.
"""

import argparse
import signal
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402

LIVE = (
    "( videotestsrc is-live=true pattern=ball ! video/x-raw,width=640,height=360,framerate=30/1 "
    "! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=30 ! rtph264pay name=pay0 pt=96 "
    "audiotestsrc is-live=true wave=sine freq=440 ! audio/x-raw,rate=48000,channels=1 "
    "! avenc_aac ! aacparse ! rtpmp4gpay name=pay1 pt=97 )"
)
CLIP = (
    "( filesrc location={path} ! qtdemux name=d "
    "d.video_0 ! queue ! h264parse config-interval=-1 ! rtph264pay name=pay0 pt=96 "
    "d.audio_0 ! queue ! aacparse ! rtpmp4gpay name=pay1 pt=97 )"
)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--clip", help="an MP4 file (H.264 + AAC) served at /clip")
    args = p.parse_args()
    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(args.port))
    mounts = server.get_mount_points()
    live = GstRtspServer.RTSPMediaFactory()
    live.set_launch(LIVE)
    live.set_shared(True)
    mounts.add_factory("/live", live)
    if args.clip:
        clip = GstRtspServer.RTSPMediaFactory()
        clip.set_launch(CLIP.format(path=args.clip))
        mounts.add_factory("/clip", clip)
    if server.attach(None) == 0:
        sys.exit(f"cannot listen on 127.0.0.1:{args.port}")
    loop = GLib.MainLoop()
    signal.signal(signal.SIGTERM, lambda *_: loop.quit())
    print("ready", flush=True)
    loop.run()


if __name__ == "__main__":
    main()
