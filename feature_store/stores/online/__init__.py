"""The online store: the latest value per entity and feature, for serving."""
