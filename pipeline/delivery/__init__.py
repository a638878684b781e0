"""Delivery: what happens to a result between intake and its receipts, one module a step.

The path, in order: `intake` (read, `record`, commit, answer), then per batch of results
`deliver` runs `route` -> `seal` -> `send` -> `outcomes` in one pass; `reconcile` re-queues
what the broker lost and resumes what the directory now knows, `replay` re-opens a failed
delivery. Support: `claims` (claim work in the ledger before acting), `breaker` and
`circuits` (per destination), `notices` (giving up, telling the lab), `services` (keys,
transports, policies, clock), `trace` (a result's timeline). Each step works on the ledger
inside the caller's session and is idempotent, so the same step run twice (a redelivered
task, a restart) does no harm. Celery tasks (workers/) call these; nothing here knows about
a broker. Receipts (DSN / MDN) are read and recorded in `pipeline.receipts`.
"""
