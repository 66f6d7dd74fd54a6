"""One module per Istio feature: a small pure function from the typed Istio model to the
Envoy message (or the part of one) it owns.

Each reads like the Istio doc section it implements. No memoization and no World here:
the generators (``translators.routes``, ``translators.clusters``...) call these and the
Translator memoizes at its stage boundaries.
"""
