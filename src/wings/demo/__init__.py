"""`wings demo`: WINGS against the LLaVA-style baseline on easy-vqa, trained, evaluated and reported end to end."""

from wings.demo.pipeline import DemoPipeline
from wings.demo.settings import DemoSettings

__all__ = ["DemoPipeline", "DemoSettings"]
