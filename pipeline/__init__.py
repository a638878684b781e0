"""labdispatch's domain: HL7 intake, recipients, sealing, transports, ledger, stats.

Nothing here imports Celery or the processes in `workers`, so every rule can be tested
with no broker running (the layering contract in pyproject.toml enforces it).
"""
