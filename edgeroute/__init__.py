"""edgeroute: an edge-versus-cloud placement router for ML inference on Ray Serve.

This package holds what the router, the edge workers and the cloud deployment
share: the Open Inference Protocol codec, the digits model contract, model
cards and loading, the stack configuration, and the command line.
"""

__version__ = "0.1.0"
