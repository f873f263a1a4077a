"""jwtproxy: an async, JWT-validating reverse proxy."""

__version__ = "0.1.0"
