"""Transports: carry one sealed envelope to a recipient's channel and report what happened.

Each channel kind (mail over SMTP, a Maildir the recipient pulls, HTTPS POST) lives in its
own module behind the `Transport` protocol of `base.py`; transports never see HL7.
"""
