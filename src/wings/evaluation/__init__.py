"""Text-only evaluation: multiple-choice accuracy (as lm-evaluation-harness), perplexity, KL to the base LLM."""
