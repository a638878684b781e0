"""One module per `labdispatch` sub-command; each exposes `register(subparsers)`."""
