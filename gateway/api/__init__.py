"""The HTTP API: the Starlette app, its routes, errors, OpenAPI document and server."""
