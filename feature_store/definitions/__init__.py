"""Definitions: what a feature repo declares (models), how it is loaded (repo) and applied, and the registry."""
