"""`[core] hostname_callable` of the end-to-end tests' Celery workers: the worker's name, as the hostname of
its own machine would be, so the REST API's task instance `hostname` tells which worker runs a task.

Kept free of imports beyond `os`: every task process of a worker imports it.
"""

from __future__ import annotations

import os


def hostname() -> str:
    return os.environ["FEATUREPIPE_E2E_HOSTNAME"]
