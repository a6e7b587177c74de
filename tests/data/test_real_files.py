"""The real published files in ../shared/data load as they are (skipped where that folder is absent)."""

from __future__ import annotations

from wings.data.dataset import ConversationDataset
from wings.data.formats import read_conversations
from wings.data.validation import check_file

SEQ = 16


def test_wings_authors_demo_files(shared_data, processor):
    root = shared_data / "wings_demo"  # the files' image paths ("data/images/x.jpg") are relative to the repo root
    finetune = read_conversations(root / "data" / "demo_finetune.json", image_folder=root)
    assert [len(c.messages) for c in finetune] == [6, 4, 2]
    assert [c.id for c in finetune] == ["00001", "00002", "00003"]
    assert finetune[1].messages[0].content == "Demo instruction 1?\n<image>"
    assert finetune[0].images == [str(root / "data" / "images" / "orange.jpg")]
    for name, records, assistant_turns in (("demo_finetune.json", 3, 6), ("demo_pretrain.json", 3, 3)):
        report = check_file(root / "data" / name, image_folder=root, processor=processor, max_length=512)
        assert report.problems == [] and (report.records, report.images) == (records, records)
        assert report.assistant_turns == assistant_turns
    dataset = ConversationDataset(root / "data" / "demo_finetune.json", processor, image_folder=root)
    sample = dataset[0]
    assert sample["pixel_values"].shape == (1, 3, 32, 32) and int(sample["image_token_mask"].sum()) == SEQ
    eot = processor.tokenizer.eos_token
    supervised = processor.tokenizer.decode([t for t in sample["labels"].tolist() if t != -100])
    assert supervised == f"Demo response.{eot}" * 3


def test_llamafactory_messages_demo(shared_data, processor):
    path = shared_data / "llamafactory_mllm_demo" / "mllm_demo.json"
    conversations = read_conversations(path)
    assert len(conversations) == 6 and [len(c.images) for c in conversations] == [2, 1, 1, 2, 1, 1]
    assert conversations[0].messages[2].content == "What are they doing?<image>"
    report = check_file(path, processor=processor, max_length=1024)
    assert report.problems == [] and (report.records, report.images, report.assistant_turns) == (6, 8, 12)
    dataset = ConversationDataset(path, processor)
    first = dataset[0]  # two images, one in each user turn
    assert first["pixel_values"].shape == (2, 3, 32, 32) and int(first["image_token_mask"].sum()) == 2 * SEQ
    assert "Kane and Gretzka" in processor.tokenizer.decode([t for t in first["labels"].tolist() if t != -100])
    chinese = dataset[3]
    assert chinese["input_ids"].shape[0] > 2 * SEQ
