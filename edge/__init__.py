"""Edge worker: a standalone OIP v2 server running the distilled student on onnxruntime."""
