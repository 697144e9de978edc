"""The streaming pipeline: capture -> detect -> track -> obscure -> output."""
