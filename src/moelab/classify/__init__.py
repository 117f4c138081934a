"""Stage 3 of the data pipeline: model-based filtering, clutter removal and rebalancing.

``ngram`` (CPU classifier), ``base`` (the interface; transformers backend; loading),
``steps`` (page type, quality, category), ``clutter`` (line scoring and removal),
``rebalance`` (category resampling), ``semantic`` (optional embedding dedup), ``train``
(labelled JSONL → model + report), ``commands`` (``train-classifier``).
Imports only ``moelab.common``, ``moelab.config`` and ``moelab.data.document``.
"""
