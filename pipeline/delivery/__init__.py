"""Delivery services: what happens to a result between intake and its receipts.

Each service is one step of the flow (record, route, seal and send, read receipts), works
on the ledger inside the caller's session, and is idempotent, so the same step run twice
(a redelivered task, a restart) does no harm. Celery tasks (workers/) call these; nothing
here knows about a broker.
"""
