"""Evaluation of trained models: held-out perplexity (``perplexity``) and the lm-eval adapter."""
