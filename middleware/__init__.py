"""jobkit's policies: one concept per module, each a Dramatiq middleware (or its helpers).

Modules here import only Dramatiq, third parties and jobkit's leaves
(``jobkit.settings``, ``jobkit.errors``); what they need of a broker (a Redis
for state, queue depths, a keep-alive) reaches them by injection from
``brokers``, which composes the stack (``brokers.stack.build_stack``).
"""
