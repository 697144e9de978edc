"""The streaming pipeline.

    capture -> detect -> track -> attribute -> synthesize -> perturb -> obscure -> output

One frame packet (``frames``) flows through the stages in that order; a run
is set up from one ``config``; every error the project raises on purpose is in
``errors``. The packages, in the order a frame meets them:

- ``io``: capture (files, network streams, cameras) and output (files,
  segments, RTSP)
- ``stages``: one class per stage, each with ``process()`` and ``reset()``,
  no I/O and no threads
- ``algorithms``: what the stages compute, by concern (tracking, attributes
  and PPAS, face warping and k-Same synthesis, perturbation, obscuring)
- ``run``: the runner (the only threads), job building and the report,
  multi-stream, batch and segments, metrics
- ``measure``: the leak measurement, apart from the pipeline
"""
