"""Airflow side of featurepipe: the FeatureStoreHook, task bodies, deadline callback, listener and UI view.

Thin orchestration over the plain `feature_store` library, which never imports Airflow.
"""
