"""Corpus readers, tokenized shards, input formats, masking and the Grain input pipeline."""
