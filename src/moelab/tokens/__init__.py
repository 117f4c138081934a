"""Stage: documents → token shards → training batches. The trainer never sees text.

``tokenizer`` (load/train/encode/hash), ``shards`` (on-disk format and validation), ``packing``
(rows and document boundaries), ``loader`` (the trainer's iterator), ``pipeline`` (the
``moelab tokens tokenize`` job). Imports only ``moelab.common``, ``moelab.config`` and
``moelab.data.document``.
"""
