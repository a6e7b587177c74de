"""Benchmarks of what WINGS costs: `python -m benchmarks [--quick]` prints one Markdown table per measurement."""
