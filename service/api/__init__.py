"""The HTTP layer: dependencies, response helpers and one thin router per resource."""
