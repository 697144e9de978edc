"""What the stages compute, by concern, with no I/O and no threads.

- ``tracker``: ByteTrack-style tracking and coasting (track stage)
- ``attributes``, ``privacy``: attribute estimation and fusion, PPAS and the
  privacy figures (attribute stage)
- ``facewarp``, ``synthesis``: the canonical face frame and k-Same surrogates
  (synth stage)
- ``perturbation``: perturbations against recognizers (perturb stage)
- ``obscure``: blur, pixelate, mask (obscure stage, and every fallback)
"""
