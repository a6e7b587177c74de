"""lm-evaluation-harness adapter: `--model wings` evaluates a WINGS model (or any model `wings eval` loads).

lm-eval finds models only in its own registry, which this module fills on import, so run the harness
through it (same arguments as `lm_eval`; needs the `eval` extra, `pip install -e ".[eval]"`):

    wings-lm-eval --model wings --model_args pretrained=runs/wings-smollm2 --tasks arc_easy
    python -m wings.evaluation.lm_eval_adapter --model wings --model_args pretrained=smollm2-135m-instruct ...

or, from Python, `import wings.evaluation.lm_eval_adapter` before `lm_eval.simple_evaluate(model="wings", ...)`.
`pretrained` takes a WINGS checkpoint directory, a registry name, or an HF causal-LM directory or id. The
WINGS model is scored text-only through lm-eval's own `HFLM` code, so prompts and metrics are lm-eval's.
"""

from __future__ import annotations

from typing import Any

import torch

try:
    from lm_eval.api.registry import register_model
    from lm_eval.models.huggingface import HFLM
except ImportError as error:  # the extra is optional: say how to get it
    raise ImportError('the lm-eval adapter needs lm-evaluation-harness: pip install -e ".[eval]"') from error

from wings.evaluation.runner import load_eval_model


@register_model("wings")
class WingsLM(HFLM):
    """`HFLM` over a model loaded by `wings.evaluation.runner.load_eval_model` (WINGS checkpoints included)."""

    def __init__(self, pretrained: str, dtype: str = "float32", device: str | None = None, **kwargs: Any) -> None:
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        loaded = load_eval_model(pretrained, dtype=getattr(torch, dtype), device=device)
        # A WINGS config is not a causal-LM config lm-eval knows; text-only it behaves as one.
        kwargs.setdefault("backend", "causal")
        super().__init__(pretrained=loaded.model, tokenizer=loaded.tokenizer, **kwargs)


def main() -> None:
    """The `lm_eval` command line with the `wings` model registered."""
    from lm_eval.__main__ import cli_evaluate  # lm-eval's command-line module: loaded only when it runs

    cli_evaluate()


if __name__ == "__main__":
    main()
