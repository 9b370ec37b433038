"""krate's own network discipline: kernel lockdown, in-process guard, egress ledger, proof.

krate's own process must never open an IP socket. `lockdown` asks the kernel to
refuse them (and every child inherits that), `guard` names any Python code that
tries anyway, `ledger` records the connections the two helper processes make on
the user's behalf, and `proof` gathers all of it into `krate audit network --prove`.
Nothing in this package may import a networking module: the import contract the
proof checks applies here too.
"""
