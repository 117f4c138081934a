"""Stage 4a: checkpoint → tokens → text. Generation knows nothing about tokenization.

Layers, each knowing less than the one above it:

* ``engine.Engine`` (with ``kv_cache`` and ``sampling``): token ids in, token ids out;
  continuous batching over preallocated KV-cache rows. Its forward is ``fast_forward``
  (with ``fast_layers``, ``fast_moe``): the model's math with fused inference-only ops.
* ``text.TextGenerator`` (with ``chat``): text and chat messages in, text out; stop strings.
* ``batcher.BatchingLoop`` + ``server.create_app`` (with ``protocol``, ``config``): the
  OpenAI-compatible HTTP API, every client's requests decoded together.
* ``loading.load_generator``: all of the above from a checkpoint path.
"""
