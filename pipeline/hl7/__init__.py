"""HL7 v2 intake: bytes a laboratory sent → messages we can trust → routing facts → ACK.

The pieces, in the order a message meets them:
- `decode`: framing, batches, byte-order marks, line ends and MSH-18 character sets;
- `segments`: the tokenizer and escape handling (the hot path, no hl7apy);
- `reference`: hl7apy's model of each HL7 version (segments, message structures, tables);
- `parse`: structure checks against that model;
- `participants` and `facts`: who must receive the result, and what it is;
- `ack`: the AA / AE / AR answer, in the sender's version and encoding characters;
- `intake`: the one call that runs all of the above over a file or a stream.
"""
