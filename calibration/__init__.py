"""Offline jobs that build artifacts the stream loads (filled by later issues)."""
