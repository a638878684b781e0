"""MLLP: the listener laboratories' LIS connect to, and a client to test a connection.

`framing` cuts the byte stream into frames; `server` commits each frame's messages to the
ledger in group transactions and only then writes their ACKs; `client` sends files (the
`submit` command) or pushes many messages at once (the benchmark).
"""
