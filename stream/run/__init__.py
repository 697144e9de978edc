"""Running the pipeline: the threads live here and nowhere else in ``stream``.

``runner`` moves frame packets through the stages (capture, parallel and
in-order stages, writer); ``job`` builds the stages and a run from a config
and writes its report; ``multi`` runs many streams in one process; ``batch``
and ``segments`` anonymize archives (segments of long videos in parallel);
``metrics`` serves Prometheus figures.
"""
