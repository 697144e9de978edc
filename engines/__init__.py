"""Inference: one backend protocol, the model zoo and per-model pre/post-processing.

Importing this package loads no GPU library (torch, tensorrt, CUDA): those
are imported lazily by the backends that need them.
"""
