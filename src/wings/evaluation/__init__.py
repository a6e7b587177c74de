"""Evaluation: text multiple choice (as lm-evaluation-harness), perplexity, KL to the base LLM; VQA and IIT."""
