"""ctm-serve's HTTP service: serves the CTM checkpoints trained by `ctm_core` (see `service.app`)."""
