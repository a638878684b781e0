"""Delivery receipts: the reports mail servers and mail clients send back about our envelopes.

Every envelope asks for them (SMTP DSN with an ENVID, and Disposition-Notification-To), and
they arrive as ordinary mail at the return address: RFC 3464 DSNs from mail servers
(delivered, delayed, failed) and RFC 8098 MDNs from the recipient's client or gateway
(processed, displayed, or failed to decrypt). They are the only evidence that a result
reached a clinician, so reading them must be as robust as sending: anything can land in a
return mailbox (auto-replies, spam, truncated bounces), and none of it may stop the reader.

- `reports`: bytes in, a `Report` out, never an exception; only the fields the ledger
  matches and shows are kept, never the returned message's body (it may hold patient data).
- `sources`: where the bytes come from (a Maildir, an IMAP mailbox), read at least once: a
  report is marked done only after the ledger recorded it, and the ledger de-duplicates by
  the report's own Message-ID.
- `record`: a report recorded in the ledger and applied to its delivery. It builds on the
  delivery steps (a failure report fails the delivery through `pipeline.delivery.notices`,
  the one failure path); `pipeline.delivery` never imports this package (import-linter).
"""
