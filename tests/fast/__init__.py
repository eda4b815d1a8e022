"""The fast tier: the server's rules, in-process, in seconds.

Every test here runs the endpoint inside the test process, through Flask's
test client, once on the embedded registry (files and ``flock`` locks in a
temporary data directory) and once on the Redis registry served by
fakeredis with Lua: the views' request-to-answer rules (protocol.md), the
append loop's endings, concatenation, expiry and garbage collection, the
registry contract and the IETF draft's main exchanges. No gunicorn, no
redis-server, no sleeping: the tier runs in well under a minute, so a
change to a rule is checked as it is made::

    scripts/test --fast            # ruff, then tests/fast only
    scripts/test --fast -k concat  # further arguments go to pytest

What only real processes can show stays with the rest of ``tests/``, which
``scripts/test`` runs in full (this tier included): bodies read from
gunicorn's socket (splice, ``SO_RCVLOWAT``, the server's own chunked
decoding and request trailers, stalls detected while no byte arrives), the
104 interim answer, killed and stopped workers, Redis deployments, proxies
and real clients.
"""
