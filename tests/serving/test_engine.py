"""The engine's step-by-step work: incremental text and stop strings (linear), cancellation within one step."""

from __future__ import annotations

import random
import threading

import pytest

from tests.fixtures.serving import wait_until
from wings.serving.engine import GenerationCancelled, IncrementalText, Prompt, SamplingOptions

HELLO = Prompt([{"role": "user", "content": "Hello"}])


def test_incremental_text_is_the_decoded_whole_for_any_tokens(engine):
    decode = engine._decode
    vocabulary = len(engine.processor.tokenizer)
    generator = random.Random(0)
    for _ in range(30):
        tokens = [generator.randrange(vocabulary) for _ in range(generator.randrange(1, 40))]
        text = IncrementalText(decode)
        for token in tokens:
            text.add(token)
        assert text.final() == decode(tokens)


def test_incremental_text_decodes_a_bounded_window_per_token(engine):
    decoded = []

    def counting_decode(tokens):
        decoded.append(len(tokens))
        return engine._decode(tokens)

    tokens = engine.processor.tokenizer("Hello there, how are you? " * 40, add_special_tokens=False)["input_ids"]
    text = IncrementalText(counting_decode, stop=["never there", "xyz"])
    for token in tokens:
        text.add(token)
    assert text.final() == engine._decode(tokens) and text.stop_at is None
    # two decodes per token, each of a few tokens: linear in the answer, not quadratic
    assert len(decoded) == 2 * len(tokens) and max(decoded) <= 3 and sum(decoded) <= 4 * len(tokens)


def test_incremental_text_finds_the_earliest_stop_across_token_boundaries(engine):
    tokens = engine.processor.tokenizer("Who are they? They're Kane and Gretzka", add_special_tokens=False)["input_ids"]
    text = IncrementalText(engine._decode, stop=["Gretzka", "re Ka", "Kane"])
    stopped_after = None
    for count, token in enumerate(tokens, start=1):
        text.add(token)
        if text.stop_at is not None and stopped_after is None:
            stopped_after = count
    assert text.final() == "Who are they? They'"
    assert engine._decode(tokens[:stopped_after]).find("re Ka") >= 0  # found as soon as it was complete
    assert engine._decode(tokens[: stopped_after - 1]).find("re Ka") < 0
    assert text.safe() == "Who are they? They'"
    held = IncrementalText(engine._decode, stop=["Kane and"])
    for token in engine.processor.tokenizer("They're Kane", add_special_tokens=False)["input_ids"]:
        held.add(token)
    assert held.safe() == "They're "  # "Kane" could begin the stop string: not shown yet


def test_a_stop_string_ends_generation_at_the_step_that_completes_it(engine):
    whole = engine.complete([HELLO], SamplingOptions(max_new_tokens=24))[0]
    steps_whole = engine.recent[-1].steps
    stop = next(
        whole.text[i : i + 2]
        for i in range(3, len(whole.text) - 2)
        if "\ufffd" not in whole.text[i : i + 2] and whole.text[i : i + 2].strip()
    )
    cut = engine.complete([HELLO], SamplingOptions(max_new_tokens=24, stop=[stop]))[0]
    assert cut.text == whole.text[: whole.text.find(stop)] and cut.finish_reason == "stop"
    assert engine.recent[-1].steps == cut.completion_tokens < steps_whole


def test_cancel_ends_a_stream_within_one_step_and_frees_the_engine(engine, gate):
    stream = engine.stream(HELLO, SamplingOptions(max_new_tokens=200))
    record = stream.progress.record
    gate.release(5)
    assert wait_until(lambda: record.steps == 5)
    stream.cancel()
    gate.release(100)
    assert wait_until(lambda: not engine.busy and record.finished)
    assert record.steps <= 6 and record.cancelled  # at most the step the gate held back
    assert stream.completion.completion_tokens == record.steps and stream.completion.finish_reason == "length"


def test_closing_a_stream_early_cancels_it_and_a_finaliser_on_its_own_thread_does_not_fail(engine, gate):
    stream = engine.stream(HELLO, SamplingOptions(max_new_tokens=200))
    record = stream.progress.record
    pieces = iter(stream)
    gate.release(3)
    assert wait_until(lambda: record.steps == 3)
    next(pieces, None)
    closer = threading.Thread(target=pieces.close)  # what a consumer that stops (a client gone) does
    closer.start()
    assert wait_until(stream.cancel_event.is_set)
    gate.release(100)
    closer.join(60)
    assert record.finished and record.steps <= 4 and record.cancelled
    # the generator's clean-up may run on the generation thread itself (garbage collection): no self-join
    other = engine.stream(HELLO, SamplingOptions(max_new_tokens=3))
    iterator = iter(other)
    next(iterator, None)
    other._thread, generation_thread = threading.current_thread(), other._thread
    iterator.close()  # would raise "cannot join current thread" if it joined itself
    generation_thread.join(60)
    assert other.progress.record.finished


def test_a_request_cancelled_while_waiting_never_generates(engine, gate):
    first = engine.stream(HELLO, SamplingOptions(max_new_tokens=200))
    gate.release(1)
    assert wait_until(lambda: first.progress.record.steps == 1)
    runs = len(engine.recent)
    cancel = threading.Event()
    waiting = engine.stream(HELLO, SamplingOptions(max_new_tokens=5), cancel=cancel)
    cancel.set()
    with pytest.raises(GenerationCancelled):
        waiting.text()
    assert len(engine.recent) == runs  # it never held the model
    first.cancel()
    gate.release(10)
    assert wait_until(lambda: not engine.busy)


def test_admission_counts_and_releases_once(engine, monkeypatch):
    from wings.serving.engine import EngineBusy

    monkeypatch.setattr(engine, "max_pending", 2)
    first, second = engine.admit(), engine.admit()
    with pytest.raises(EngineBusy):
        engine.admit()
    first.release()
    first.release()
    assert engine.pending == 1
    second.release()
    assert engine.pending == 0
