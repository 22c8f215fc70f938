"""The HTTP server: Fireworks routes, Together routes, signed blob routes."""
