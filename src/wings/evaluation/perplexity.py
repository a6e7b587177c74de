"""Perplexity of a text under a causal LM.

The text is tokenised once and cut into disjoint windows of `window` tokens; each window is predicted
from the token before it (the prefix token, BOS else EOS, for the first), so every token of the text is
predicted exactly once, as lm-eval's rolling log-likelihood with context length 1 does.
`perplexity = exp(total NLL / predicted tokens)`; `bits_per_byte` makes tokenizers comparable.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from wings.evaluation.multiple_choice import model_max_length, prefix_token_id


@torch.no_grad()
def token_nlls(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Per-position NLL of token t+1 given tokens <= t, shape (batch, length-1); padded positions are 0."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1].float()
    nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), input_ids[:, 1:], reduction="none")
    return nll * attention_mask[:, 1:]


def text_perplexity(
    model: Any,
    tokenizer: Any,
    text: str,
    window: int | None = None,
    batch_size: int = 4,
    max_tokens: int | None = None,
    progress: bool | str = False,
) -> dict[str, float]:
    """Token perplexity, mean NLL, token count and bits per byte of `text` (first `max_tokens` tokens if set)."""
    tokens = tokenizer.encode(text, add_special_tokens=False)
    if max_tokens:
        tokens = tokens[:max_tokens]
    if not tokens:
        raise ValueError("perplexity: the text encodes to no tokens")
    window = min(window or 1024, model_max_length(model) - 1)
    device = next(model.parameters()).device
    # Each row: the token before the window (or the prefix token), then the window's tokens.
    rows = [
        [tokens[start - 1] if start else prefix_token_id(tokenizer)] + tokens[start : start + window]
        for start in range(0, len(tokens), window)
    ]
    total_nll, label = 0.0, progress if isinstance(progress, str) else "perplexity"
    for begin in tqdm(range(0, len(rows), batch_size), desc=label, disable=not progress, leave=False):
        batch = rows[begin : begin + batch_size]
        width = max(map(len, batch))
        input_ids = torch.zeros(len(batch), width, dtype=torch.long)
        attention_mask = torch.zeros(len(batch), width, dtype=torch.long)
        for i, row in enumerate(batch):
            input_ids[i, : len(row)] = torch.tensor(row)
            attention_mask[i, : len(row)] = 1
        total_nll += token_nlls(model, input_ids.to(device), attention_mask.to(device)).sum().item()
    decoded_bytes = len(tokenizer.decode(tokens).encode("utf-8"))
    mean_nll = total_nll / len(tokens)
    return {
        "perplexity": math.exp(mean_nll),
        "nll": mean_nll,
        "num_tokens": len(tokens),
        "bits_per_byte": total_nll / math.log(2) / max(decoded_bytes, 1),
    }


def file_perplexity(model: Any, tokenizer: Any, path: Path, **kwargs: Any) -> dict[str, float]:
    """`text_perplexity` of a UTF-8 text file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"perplexity: text file {path} does not exist")
    return text_perplexity(model, tokenizer, path.read_text(encoding="utf-8"), **kwargs)
