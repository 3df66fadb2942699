"""Tokenization (paper §4.8): the offline OLMo-3 tokenizer, the memory-mapped Arrow cache
and document-isolating packing. Plain Python, no Dagster."""
