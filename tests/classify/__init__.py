"""Tests of stage 3 (moelab.classify)."""
