"""Inference: one generation engine (`engine`) behind `wings chat` (`chat`), `wings generate` (`batch`) and the
OpenAI-compatible `wings serve` (`server`, `serve`)."""
