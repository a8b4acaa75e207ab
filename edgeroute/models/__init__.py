"""The digits models: a large teacher for the cloud, a distilled student (FP32 and INT8) for the edge."""
