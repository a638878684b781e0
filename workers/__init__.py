"""labdispatch's processes: the command line, and (later) the Celery app and its tasks.

Imports flow one way, `workers` → `pipeline`; tasks and commands stay thin.
"""
