"""One router per resource: sampling, models, health, metrics, reference (density, W1), explorer (page)."""
