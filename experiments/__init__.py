"""Experiments: what the method learns under the demo's settings (each trains through the project's trainer)."""
