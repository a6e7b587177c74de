"""A learner that may attend to nothing: `fused.attend` with a null key (an experiment, not the library's learner).

`python -m experiments.easy_vqa_stage1 --null-key` swaps it in for one run (docs/results/demo.md, "Why yes/no").
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def attend_with_null_key(queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor | None):
    """`fused.attend` with one more key for every query: logit 0, value 0 (a "null key").

    The paper's learner spreads a softmax over the image's tokens only, so its output is always some mix of what the
    image shows: it cannot say "what the question names is not there" by attending less. With a null key it can
    (the output shrinks towards 0 where no visual key matches the query). An experiment, not the library's learner.
    """
    if mask is None:  # plainly causal over the same tokens (a textual learner's shortcut): made explicit
        length = queries.shape[1]
        causal = torch.ones(length, length, dtype=torch.bool, device=queries.device).tril()
        mask = torch.zeros(causal.shape, device=queries.device).masked_fill(~causal, float("-inf"))[None, None]
    with torch.autocast(queries.device.type, enabled=False):  # attend in float32, as the fast path does on a CPU
        queries, keys, values, mask = queries.float(), keys.float(), values.float(), mask.float()
        nothing = keys.new_zeros(*keys.shape[:2], 1, keys.shape[-1])
        keys, values = torch.cat([keys, nothing], dim=2), torch.cat([values, nothing], dim=2)
        mask = torch.cat(
            [mask.expand(queries.shape[0], 1, -1, -1), mask.new_zeros(queries.shape[0], 1, mask.shape[2], 1)], dim=-1
        )
        attended = F.scaled_dot_product_attention(queries.transpose(1, 2), keys, values, mask)
    return attended.transpose(1, 2).flatten(2)
