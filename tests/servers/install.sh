#!/usr/bin/env bash
# What the tests need from Debian: GStreamer's RTSP server for the live-stream tests
# (tests/test_live.py, run under Debian's own /usr/bin/python3) and Chromium for the
# review page's browser test (tests/test_review.py). Installs only what is missing,
# and only where it can (root with apt-get); otherwise says what to install.
set -uo pipefail
if [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing Chromium for the review page's browser test (Debian package)"
    export DEBIAN_FRONTEND=noninteractive
    { apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null; } \
      || echo "warning: Chromium could not be installed; the browser test will be skipped" >&2
  else
    echo "warning: Chromium is missing, so the review page's browser test will be skipped;" \
         "install: chromium" >&2
  fi
fi
packages="python3-gi gir1.2-gstreamer-1.0 gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base
gstreamer1.0-plugins-good gstreamer1.0-plugins-bad gstreamer1.0-plugins-ugly gstreamer1.0-libav"
probe='import gi; gi.require_version("GstRtspServer", "1.0"); from gi.repository import GstRtspServer'
if [ -x /usr/bin/python3 ] && /usr/bin/python3 -c "$probe" 2>/dev/null \
   && command -v gst-inspect-1.0 >/dev/null && gst-inspect-1.0 avenc_aac >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "installing GStreamer's RTSP server for the live-stream tests (Debian packages)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq --no-install-recommends $packages gstreamer1.0-tools >/dev/null \
    && exit 0
fi
echo "warning: GStreamer's RTSP server is missing, so the live-stream tests will be skipped;" \
     "install: $(echo $packages)" >&2
exit 0
