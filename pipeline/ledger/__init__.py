"""The ledger: the source of truth for every result and every step taken with it.

Messages (what a laboratory sent, kept encrypted at rest), deliveries (one per message,
recipient and channel, with its state), attempts (each try of a transport, with the far
side's reply), events (the timeline of every step) and receipts (MDN / DSN reports read
back). The broker only carries work; anything non-final can be picked up again from here.
"""
