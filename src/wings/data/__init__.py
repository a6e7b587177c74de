"""Data: conversation files -> validated, indexed samples -> batches (files -> processor -> model)."""

from .collator import WingsCollator
from .dataset import ConversationDataset, InvalidSampleError, MixtureDataset, build_dataset, read_data_config
from .formats import IMAGE_PLACEHOLDER, Conversation, Message, RecordError, RecordFile, normalize_record, read_conversations
from .images import ImageLoadError, load_image, pad_to_square, to_rgb
from .sampler import LengthGroupedSampler
from .validation import CheckReport, Problem, check_file, conversation_problems

__all__ = [
    "IMAGE_PLACEHOLDER",
    "CheckReport",
    "Conversation",
    "ConversationDataset",
    "ImageLoadError",
    "InvalidSampleError",
    "LengthGroupedSampler",
    "Message",
    "MixtureDataset",
    "Problem",
    "RecordError",
    "RecordFile",
    "WingsCollator",
    "build_dataset",
    "check_file",
    "conversation_problems",
    "load_image",
    "normalize_record",
    "pad_to_square",
    "read_conversations",
    "read_data_config",
    "to_rgb",
]
