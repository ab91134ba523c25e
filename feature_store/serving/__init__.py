"""Serving: reads of features online and for training."""
