"""The contract between training and everything after it: checkpoint formats and HF interop."""
