"""One router per resource: sampling, models, health, metrics."""
