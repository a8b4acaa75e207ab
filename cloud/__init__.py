"""Cloud tier: the large teacher model as an autoscaled, batching Ray Serve deployment."""
