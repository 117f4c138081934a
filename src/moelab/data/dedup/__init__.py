"""Dedup passes: exact (MD5 of the dots normalisation), line-level, MinHash-LSH."""
