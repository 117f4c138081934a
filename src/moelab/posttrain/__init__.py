"""Post-training on the pretraining trainer: supervised fine-tuning (SFT) and DPO."""
