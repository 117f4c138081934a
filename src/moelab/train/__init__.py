"""Stage 3: token shards + config → checkpoints + metrics. The single-device trainer."""
