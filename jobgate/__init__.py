"""jobgate, as its distribution is named: ``from jobgate.client import Client``. The code
lives in the ``gateway`` package (the server) and ``gateway.client`` (this client)."""
