"""Stage 1 of moelab: raw web pages to clean, deduplicated documents. Imports no torch."""
