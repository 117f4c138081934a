"""Tests of moelab.data: readers, filters, dedup, runner, synthetic web."""
