"""The router: a Ray Serve ingress that places each inference request on an edge or cloud target."""
