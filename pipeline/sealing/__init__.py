"""Sealing: each result signed by the laboratory, then enveloped for one recipient (S/MIME).

Any recipient with stock `openssl cms` (or an S/MIME mail client) must be able to decrypt
and verify what we send, so every choice here follows RFC 8551 and is checked against the
real `openssl` binary in the tests. The pieces, in the order an envelope is built:
- `keys`: the laboratory's signing key and the recipient certificate to encrypt for;
- `content`: the MIME entity the clinician reads (summary, the HL7 message, its documents);
- `smime`: sign, envelope, and the outer RFC 5322 headers, ready for SMTP;
- `demo_pki`: throw-away test certificates, so a demo or a test needs no real PKI.

Nothing here touches a socket or the ledger: it turns bytes and keys into bytes.
"""
