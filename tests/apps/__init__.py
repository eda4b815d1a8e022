"""What teams write around the endpoint, loaded by module path: a Flask host app, hooks."""
