"""``edgeroute bench``: every routing policy on one seeded trace with faults, against the oracle.

:mod:`.scenario` reads the scenario file, :mod:`.run` drives the arms over the
real stack, :mod:`.compare` computes the hindsight oracle and the goals, and
:mod:`.report` writes the JSON, Markdown and plots.
"""
