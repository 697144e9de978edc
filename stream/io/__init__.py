"""Capture and output: the only part of the pipeline that touches files, sockets and codecs.

``sources`` reads files, network streams and cameras into frame packets;
``sinks`` writes anonymized frames and copied audio to files, segmented files
or RTSP (through the ``publisher`` process); ``demo`` makes the built-in
clip; ``adts``, ``files`` and ``redact`` are their helpers (AAC framing,
bounded array files, URLs without their secrets).
"""
