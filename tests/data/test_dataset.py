"""Datasets (fail fast / skip invalid / drop too long), mixtures by ratio, the sampler."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from torch.utils.data import DataLoader

from wings.data.dataset import ConversationDataset, InvalidSampleError, MixtureDataset, build_dataset, read_data_config
from wings.data.sampler import LengthGroupedSampler
from wings.model.processing_wings import WingsCollator

SEQ = 16


def turn(speaker, value):
    return {"from": speaker, "value": value}


def image_record(answer="A red square.", images=1):
    return {
        "image": ["red.png"] * images,
        "conversations": [turn("human", "<image>" * images + "\nWhat?"), turn("gpt", answer)],
    }


def text_record(answer="Hello there."):
    return {"conversations": [turn("human", "Hi"), turn("gpt", answer)]}


@pytest.fixture
def folder(tmp_path):
    Image.new("RGB", (20, 10), (255, 0, 0)).save(tmp_path / "red.png")
    (tmp_path / "broken.png").write_bytes(b"nope")
    return tmp_path


def write(folder, records, name="data.jsonl"):
    path = folder / name
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_items_are_model_inputs(folder, chatml_processor):
    dataset = ConversationDataset(write(folder, [image_record(), text_record()]), chatml_processor)
    assert len(dataset) == 2 and dataset.has_images.tolist() == [True, False]
    first = dataset[0]
    assert int(first["image_token_mask"].sum()) == SEQ and first["pixel_values"].shape == (1, 3, 32, 32)
    assert dataset[1]["pixel_values"].shape[0] == 0


def test_fails_fast_on_a_bad_record_naming_it(folder, chatml_processor):
    path = write(folder, [text_record(), {"conversations": [turn("human", "Hi"), turn("gpt", "")]}])
    with pytest.raises(InvalidSampleError) as error:
        ConversationDataset(path, chatml_processor)
    assert str(error.value) == (
        f"{path}: record 1: conversations[1]: empty assistant turn. Fix it (`wings data check {path}` lists every "
        "problem) or pass skip_invalid=True (--skip-invalid-samples) to skip such records"
    )


def test_skip_invalid_counts_what_was_skipped_and_why(folder, chatml_processor):
    records = [
        text_record(),
        {"image": "gone.png", "conversations": [turn("human", "<image>"), turn("gpt", "x")]},
        {"conversations": [turn("human", "Hi"), turn("gpt", "")]},
        {"conversations": [turn("human", "<image>Hi"), turn("gpt", "x")]},
        {"image": "broken.png", "conversations": [turn("human", "<image>"), turn("gpt", "x")]},
    ]
    dataset = ConversationDataset(write(folder, records), chatml_processor, skip_invalid=True)
    assert dataset.indices.tolist() == [0, 4]  # the unreadable image is only found when the sample is loaded
    assert dataset.skipped == {"missing image": 1, "empty turn": 1, "placeholders": 1}
    assert dataset.summary() == (
        "2 of 5 records pass the checks so far (images are opened when used); "
        "skipped 1 (missing image), 1 (empty turn), 1 (placeholders)"
    )
    assert dataset.skipped_records == {"missing image": [1], "empty turn": [2], "placeholders": [3]}
    replacement = dataset[1]  # record 4's image is corrupt: the next usable sample comes instead
    assert not replacement["image_token_mask"].any() and dataset.skipped["unreadable image"] == 1
    strict = ConversationDataset(write(folder, [records[4]], "strict.jsonl"), chatml_processor)
    with pytest.raises(InvalidSampleError, match=r"record 0: .*broken.png: not a readable image file"):
        strict[0]


def test_samples_whose_images_alone_exceed_max_length_are_dropped_and_counted(folder, chatml_processor):
    path = write(folder, [image_record(images=3), image_record(), text_record()])
    dataset = ConversationDataset(path, chatml_processor, max_length=40)
    assert dataset.indices.tolist() == [1, 2] and dataset.dropped == {"images alone exceed max_length": 1}
    assert all(len(dataset[i]["input_ids"]) <= 40 for i in range(len(dataset)))


def test_mixture_ratios_and_config(folder, chatml_processor):
    images = write(folder, [image_record() for _ in range(10)], "images.jsonl")
    texts = write(folder, [text_record() for _ in range(4)], "texts.jsonl")
    (folder / "mix.yaml").write_text(
        "datasets:\n  - {path: images.jsonl, ratio: 0.5}\n  - {path: texts.jsonl, ratio: 2.5, image_folder: .}\n"
    )
    sources = read_data_config(folder / "mix.yaml")
    assert [s.path for s in sources] == [str(images), str(texts)] and sources[1].image_folder == str(folder)
    mixture = build_dataset(folder / "mix.yaml", chatml_processor, seed=3)
    counts = np.bincount(mixture.index[:, 0])
    assert counts.tolist() == [5, 10] and len(set(mixture.index[mixture.index[:, 0] == 0, 1])) == 5
    assert np.bincount(mixture.index[mixture.index[:, 0] == 1, 1]).tolist() == [3, 3, 2, 2] or sorted(
        np.bincount(mixture.index[mixture.index[:, 0] == 1, 1]).tolist()
    ) == [2, 2, 3, 3]
    assert mixture.has_images.sum() == 5 and int(mixture[0]["image_token_mask"].sum()) == SEQ
    with pytest.raises(ValueError, match=r"datasets\[0\]: unknown key\(s\) \['weight'\]"):
        read_data_config({"datasets": [{"path": "x", "weight": 2}]})
    with pytest.raises(ValueError, match="2 data sets but 1 ratios"):
        MixtureDataset([mixture.datasets[0], mixture.datasets[1]], [1.0])


def test_sampler_groups_by_modality_and_length():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 1000, size=103)
    has_images = rng.random(103) < 0.6
    sampler = LengthGroupedSampler(lengths, has_images, batch_size=4, mega_batch_factor=50, seed=1)
    order = list(sampler)
    assert sorted(order) == list(range(103))
    batches = sampler.batches()
    mixed = [b for b in batches if len(set(has_images[b].tolist())) > 1]
    assert len(mixed) <= 1 and (not mixed or mixed[0] is batches[-1] or any(b is mixed[0] for b in batches[-2:]))
    full = [b for b in batches if len(b) == 4 and len(set(has_images[b].tolist())) == 1]
    spread = np.mean([lengths[b].max() - lengths[b].min() for b in full])
    random_spread = np.mean([np.ptp(lengths[i : i + 4]) for i in range(0, 100, 4)])  # ~ 600 for 4 uniform draws
    assert spread < 0.25 * random_spread
    sampler.set_epoch(1)
    assert list(sampler) != order


def test_data_loader_end_to_end(folder, chatml_processor):
    dataset = ConversationDataset(
        write(folder, [image_record(), text_record(), image_record(images=2)]), chatml_processor
    )
    sampler = LengthGroupedSampler(dataset.lengths, dataset.has_images, batch_size=3)
    loader = DataLoader(dataset, batch_size=3, sampler=sampler, collate_fn=WingsCollator(chatml_processor.pad_token_id))
    batch = next(iter(loader))
    assert batch["pixel_values"].shape == (3, 3, 32, 32)
    assert int(batch["image_token_mask"].sum()) == 3 * SEQ
    assert batch["labels"].shape == batch["input_ids"].shape
