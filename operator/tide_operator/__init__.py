"""Tide operator: scales Redis queue consumers from their backlog.

``kopf run -m tide_operator -A`` imports this package with kopf already loaded: that is when the handlers
register. Importing ``tide_operator.policy`` or ``tide_operator.spec`` elsewhere (tests, tools) stays free of
kopf and of any side effect.
"""

import sys

if "kopf" in sys.modules:
    from tide_operator import handlers as handlers
