"""`labdispatch bench` and what it, and `labdispatch demo`, feed the stack with.

`synthetic` makes the inputs (results, directory, test PKI; never production data), `run`
drives the whole stack with them and measures, `scratch` gives each run its own database.
"""
