"""Tests of the token stage (moelab.tokens)."""
