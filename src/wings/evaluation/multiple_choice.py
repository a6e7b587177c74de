"""Multiple-choice scoring by log-likelihood, computed exactly as lm-evaluation-harness computes it.

For each (context, continuation) pair: trailing spaces of the context move to the continuation, the
whole string and the context are tokenised, and the continuation's tokens are the tail of the whole
encoding past the context's (lm-eval's `_encode_pair`); an empty context is replaced by the prefix token
(BOS, else EOS). The score is the summed log-probability of the continuation tokens. `acc` takes the
argmax of the scores, `acc_norm` the argmax of score / len(choice) in characters (lm-eval's
`completion_len`, the choice text without the delimiter). Requests are batched longest first, right-padded
with an attention mask, so the order of the inputs never changes a score beyond float rounding.

The model is anything whose `model(input_ids=..., attention_mask=...).logits` gives next-token logits:
any Hugging Face causal LM, or a WINGS model on text-only input.
"""

from __future__ import annotations

import inspect
import math
import random
from collections import defaultdict
from typing import Any

import torch
from tqdm.auto import tqdm

from wings.evaluation.shared_prefix import can_share_prefixes, prefix_shared_logits
from wings.evaluation.task_types import Doc, Task

FEWSHOT_SEED = 1234  # lm-eval's default `fewshot_random_seed`
TARGET_DELIMITER = " "
FEWSHOT_DELIMITER = "\n\n"


def prefix_token_id(tokenizer: Any) -> int:
    """The token that stands in for an empty context: BOS if the tokenizer has one, else EOS (as lm-eval)."""
    token_id = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if token_id is None:
        raise ValueError("the tokenizer has neither a BOS nor an EOS token to stand in for an empty context")
    return int(token_id)


def encode_pair(tokenizer: Any, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Token ids of (context, continuation), split the way lm-eval splits them."""
    if not context:
        continuation_ids = tokenizer.encode(continuation)
        return [prefix_token_id(tokenizer)], continuation_ids
    spaces = len(context) - len(context.rstrip())
    if spaces:  # a trailing space belongs to the next word's token in BPE vocabularies
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = tokenizer.encode(context + continuation)
    context_ids = tokenizer.encode(context)
    return context_ids, whole[len(context_ids) :]


def model_max_length(model: Any, default: int = 2048) -> int:
    """The longest input the model takes (config fields lm-eval reads, in its order)."""
    config = getattr(model, "config", None)
    text_config = getattr(config, "text_config", None) or config
    for attribute in ("n_positions", "max_position_embeddings", "n_ctx"):
        value = getattr(text_config, attribute, None)
        if isinstance(value, int) and value > 0:
            return value
    return default


def positions_logits(
    model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, start: int, end: int
) -> torch.Tensor:
    """Logits at positions start..end-1 only: the vocabulary projection of the other positions is skipped when
    the model takes `logits_to_keep` (Hugging Face causal LMs and WINGS do), else they are sliced afterwards."""
    if "logits_to_keep" in inspect.signature(model.forward).parameters:
        keep = torch.arange(start, end, device=input_ids.device)
        return model(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=keep).logits
    return model(input_ids=input_ids, attention_mask=attention_mask).logits[:, start:end]


@torch.no_grad()
def loglikelihoods(
    model: Any,
    tokenizer: Any,
    requests: list[tuple[str, str]],
    batch_size: int = 16,
    max_length: int | None = None,
    progress: bool | str = False,
    share_inputs: bool = True,
) -> list[tuple[float, bool]]:
    """Summed log-probability of each continuation given its context, and whether it is the greedy output.

    With `share_inputs`, requests whose model inputs are the same tokens run as one row: when every choice is one
    token after a shared context (MMLU's " A"/" B"/" C"/" D"), one forward of the context scores them all, as
    lm-evaluation-harness does. A request's inputs are its context and continuation without the last token, so the
    scores are the ones each request would get from a row of its own (the same positions of the same tokens).
    Rows that share the tokens before their scored positions (the choices of one question) share one forward of
    those tokens too, with a KV cache (`shared_prefix`, for models whose cache allows it)."""
    max_length = max_length or model_max_length(model)
    device = next(model.parameters()).device
    encoded = []
    for context, continuation in requests:
        context_ids, continuation_ids = encode_pair(tokenizer, context, continuation)
        if not continuation_ids:
            raise ValueError(f"continuation {continuation!r} encodes to no tokens after context {context[-60:]!r}")
        # Left-truncate as lm-eval does: the last max_length+1 tokens, minus the final one (it is only a target).
        tokens = (context_ids + continuation_ids)[-(max_length + 1) :]
        encoded.append((tuple(tokens[:-1]), tokens[len(tokens) - len(continuation_ids) :]))
    rows: dict[tuple[int, ...], list[int]] = {}  # model inputs -> the requests scored from that row
    for index, (inputs, _) in enumerate(encoded):
        rows.setdefault(inputs if share_inputs else (index, *inputs), []).append(index)
    row_inputs = [encoded[members[0]][0] for members in rows.values()]
    row_members = list(rows.values())
    span = [max(len(encoded[i][1]) for i in members) for members in row_members]  # positions each row needs
    prefix = [row_inputs[r][: len(row_inputs[r]) - span[r]] for r in range(len(row_inputs))]  # before any score
    sharing = share_inputs and can_share_prefixes(model)
    # Longest first: batches of similar length waste little padding, and an out-of-memory error comes early; the
    # rows of one prefix next to each other, so that they land in the same batch and share its forward.
    longest = {}
    for r in range(len(row_inputs)):
        longest[prefix[r]] = max(longest.get(prefix[r], 0), len(row_inputs[r]))
    order = sorted(range(len(row_inputs)), key=lambda r: (-longest[prefix[r]], prefix[r], -len(row_inputs[r]), r))
    results: list[tuple[float, bool]] = [(0.0, False)] * len(encoded)
    batches = [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
    label = progress if isinstance(progress, str) else "loglikelihood"
    for batch in tqdm(batches, desc=label, disable=not progress, leave=False):
        shared = dict.fromkeys(prefix[r] for r in batch)
        if sharing and len(shared) < len(batch) and all(shared):  # some rows share a prefix: run it once
            prefixes = list(shared)
            logits = prefix_shared_logits(
                model,
                prefixes,
                [row_inputs[r][len(prefix[r]) :] for r in batch],
                [prefixes.index(prefix[r]) for r in batch],
            )
            if logits is not None:
                for row, r in enumerate(batch):
                    _score_row(
                        torch.log_softmax(logits[row, : span[r]].float(), dim=-1), row_members[r], encoded, results
                    )
                continue
            sharing = False  # this model's cache cannot be shared: every later batch runs its rows whole
        width = max(len(row_inputs[r]) for r in batch)
        input_ids = torch.zeros(len(batch), width, dtype=torch.long)
        attention_mask = torch.zeros(len(batch), width, dtype=torch.long)
        for row, r in enumerate(batch):
            input_ids[row, : len(row_inputs[r])] = torch.tensor(row_inputs[r])
            attention_mask[row, : len(row_inputs[r])] = 1
        # Logits and softmax only where continuation tokens are predicted: the vocabulary is the costly axis.
        first = min(len(row_inputs[r]) - span[r] for r in batch)
        logits = positions_logits(model, input_ids.to(device), attention_mask.to(device), first, width)
        for row, r in enumerate(batch):
            end = len(row_inputs[r]) - first
            _score_row(
                torch.log_softmax(logits[row, end - span[r] : end].float(), dim=-1), row_members[r], encoded, results
            )
    return results


def _score_row(log_probs: torch.Tensor, members: list[int], encoded: list, results: list) -> None:
    """The score and greedy flag of every request read from one row's log-probabilities at its scored positions."""
    for index in members:
        targets = encoded[index][1]
        positions = log_probs[len(log_probs) - len(targets) :]
        target_tensor = torch.tensor(targets, device=positions.device)
        score = positions.gather(-1, target_tensor[:, None]).sum().item()
        greedy = bool((positions.argmax(-1) == target_tensor).all().item())
        results[index] = (score, greedy)


def _fewshot_docs(task: Task, docs: list[Doc], pool: list[Doc], num_fewshot: int) -> list[list[Doc]]:
    """The k exemplars of each doc: the pool's first k (MMLU) or a seeded random draw per doc, as lm-eval."""
    if num_fewshot == 0:
        return [[] for _ in docs]
    if len(pool) < num_fewshot:
        raise ValueError(f"task {task.name}: {num_fewshot}-shot needs {num_fewshot} exemplars, split has {len(pool)}")
    if task.fewshot_sampler == "first_n":
        by_group: dict[str | None, list[Doc]] = defaultdict(list)
        for doc in pool:
            by_group[doc.group].append(doc)
        return [by_group.get(doc.group, pool)[:num_fewshot] for doc in docs]
    rng = random.Random(FEWSHOT_SEED)
    # One generator drawn in document order: every run of the same task and k gets the same exemplars.
    return [rng.sample(pool, num_fewshot) for _ in docs]


def _exemplar_text(doc: Doc) -> str:
    if doc.shared_continuation is not None:
        return doc.choices[doc.gold] + TARGET_DELIMITER + doc.shared_continuation + FEWSHOT_DELIMITER
    return doc.question + TARGET_DELIMITER + doc.choices[doc.gold] + FEWSHOT_DELIMITER


def build_requests(task: Task, docs: list[Doc], fewshot: list[list[Doc]]) -> list[list[tuple[str, str]]]:
    """The (context, continuation) pairs of each doc, with the task description and exemplars in front."""
    all_requests = []
    for doc, exemplars in zip(docs, fewshot):
        prefix = (task.description(doc) if task.description else "") + "".join(map(_exemplar_text, exemplars))
        if doc.shared_continuation is not None:
            all_requests.append(
                [(prefix + choice, TARGET_DELIMITER + doc.shared_continuation) for choice in doc.choices]
            )
        else:
            all_requests.append([(prefix + doc.question, TARGET_DELIMITER + choice) for choice in doc.choices])
    return all_requests


def score_docs(docs: list[Doc], lls: list[list[float]]) -> list[dict[str, float]]:
    """acc and acc_norm of each doc from the log-likelihoods of its choices."""
    scores = []
    for doc, doc_lls in zip(docs, lls):
        lengths = [float(len(choice)) for choice in doc.choices]
        pred = max(range(len(doc_lls)), key=lambda i: doc_lls[i])
        pred_norm = max(range(len(doc_lls)), key=lambda i: doc_lls[i] / lengths[i])
        scores.append({"acc": float(pred == doc.gold), "acc_norm": float(pred_norm == doc.gold)})
    return scores


def _mean_and_stderr(values: list[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, 0.0
    variance = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
    return mean, math.sqrt(variance / len(values))


def evaluate_multiple_choice(
    model: Any,
    tokenizer: Any,
    task: Task,
    docs: list[Doc],
    fewshot_pool: list[Doc] | None = None,
    num_fewshot: int = 0,
    batch_size: int = 16,
    limit: int | None = None,
    progress: bool = False,
    share_inputs: bool = True,
) -> dict[str, Any]:
    """Score a multiple-choice task: its metrics (mean and standard error), per-group scores, sample count
    (`share_inputs`: see `loglikelihoods`; False only to measure what the sharing saves)."""
    docs = docs[:limit] if limit else docs
    if not docs:
        raise ValueError(f"task {task.name}: no documents to evaluate")
    fewshot = _fewshot_docs(task, docs, fewshot_pool or [], num_fewshot)
    per_doc = build_requests(task, docs, fewshot)
    flat = [request for requests in per_doc for request in requests]
    results = loglikelihoods(
        model, tokenizer, flat, batch_size=batch_size, progress=progress and task.name, share_inputs=share_inputs
    )
    lls, start = [], 0
    for requests in per_doc:
        lls.append([score for score, _ in results[start : start + len(requests)]])
        start += len(requests)
    scores = score_docs(docs, lls)
    out: dict[str, Any] = {"num_samples": len(docs), "num_fewshot": num_fewshot}
    for metric in task.metrics:
        out[metric], out[f"{metric}_stderr"] = _mean_and_stderr([s[metric] for s in scores])
    groups: dict[str, list[dict[str, float]]] = defaultdict(list)
    for doc, score in zip(docs, scores):
        if doc.group is not None:
            groups[doc.group].append(score)
    if len(groups) > 1:
        out["groups"] = {
            name: {**{m: _mean_and_stderr([s[m] for s in group])[0] for m in task.metrics}, "num_samples": len(group)}
            for name, group in sorted(groups.items())
        }
    return out
