"""The digits models: a large cloud teacher and a distilled edge student (FP32 and INT8)."""
