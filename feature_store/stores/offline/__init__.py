"""The offline store: full feature history for point-in-time-correct training data."""
