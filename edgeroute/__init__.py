"""edgeroute: an edge-versus-cloud placement router for ML inference on Ray Serve.

This package is the base the router, the edge workers and the cloud deployment
share: the Open Inference Protocol codec, the digits model contract, model
cards and loading, and the stack configuration types. It imports nothing from
``router``, ``edge`` or ``cloud``. The tools (the ``edgeroute`` command, the local
stack, benchmark, simulator, demo and chaos) live above everything, in
:mod:`edgeroute.tools`.
"""

__version__ = "0.1.0"
