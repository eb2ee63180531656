"""Entry point for ``locust -f loadtest/locustfile.py`` from a checkout: the users live in the installed package.

The code is :mod:`nercc.loadtest.locustfile` (it ships in the wheel; ``nercc loadtest --engine locust`` runs that
file). Locust collects the User classes of this module, so every public name of it is imported here (the user
classes, HedgedUser included when the client offers ``hedged``; the event hooks register on import).
Usage and options: docs/loadtest.md ("The locustfile on its own").
"""

from nercc.loadtest.locustfile import *  # noqa: F403
