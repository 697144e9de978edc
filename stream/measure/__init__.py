"""Measurements of a run, apart from the pipeline: ``leak`` (faces left readable)."""
