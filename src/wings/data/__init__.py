"""Data: conversation files -> validated, indexed samples, the lowest layer (files -> processor -> model).

It imports nothing above it: the dataset and the checks receive a processor as an argument, and batch padding is the
processor's (`wings.model.processing_wings.WingsCollator`).
"""

from .dataset import ConversationDataset, InvalidSampleError, MixtureDataset, build_dataset, read_data_config
from .formats import (
    IGNORE_INDEX,
    IMAGE_PLACEHOLDER,
    Conversation,
    Message,
    RecordError,
    RecordFile,
    normalize_record,
    read_conversations,
    read_jsonl,
)
from .images import ImageLoadError, load_image, pad_to_square, to_rgb
from .sampler import LengthGroupedSampler
from .validation import CheckReport, ConversationProcessor, Problem, SampleDropped, check_file, conversation_problems

__all__ = [
    "IGNORE_INDEX",
    "IMAGE_PLACEHOLDER",
    "CheckReport",
    "Conversation",
    "ConversationProcessor",
    "ConversationDataset",
    "ImageLoadError",
    "InvalidSampleError",
    "LengthGroupedSampler",
    "Message",
    "MixtureDataset",
    "Problem",
    "RecordError",
    "RecordFile",
    "SampleDropped",
    "build_dataset",
    "check_file",
    "conversation_problems",
    "load_image",
    "normalize_record",
    "pad_to_square",
    "read_conversations",
    "read_data_config",
    "read_jsonl",
    "to_rgb",
]
