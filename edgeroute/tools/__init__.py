"""The tools built on top of the router, edge and cloud packages.

The ``edgeroute`` command (:mod:`.cli`), the local stack it starts (:mod:`.stack`),
the load generator and its reports, the benchmark (:mod:`.bench`), the simulator
(:mod:`.sim`), the demo and the chaos commands. Nothing in ``router``, ``edge``,
``cloud`` or the base ``edgeroute`` package imports from here.
"""
