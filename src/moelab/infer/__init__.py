"""Stage 4a: checkpoint → tokens → text. Generation knows nothing about tokenization."""
