"""Where feature values live: the offline store (full history) and the online store (latest values)."""
