"""`labdispatch bench` and what it, and `labdispatch demo`, feed the stack with.

`synthetic` makes the inputs (results, directory, test PKI; never production data), `run`
drives the whole stack with them and measures (`openloop`: the load at a fixed rate;
`floor`: the unavoidable work per result; `pgwrites`: PostgreSQL bytes written;
`progress`: the terminal's progress line), `lean_smtp` is its SMTP receiver, `scratch`
gives each run its own database.
"""
