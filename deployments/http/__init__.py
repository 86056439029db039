"""The HTTP contract of the service: edge middleware, errors, schema and body parsing."""
