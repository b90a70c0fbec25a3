"""S3 storage: any S3-compatible server (AWS S3, MinIO, SeaweedFS) through aioboto3.

One client per process, opened in ``start()`` and reused: a client per request would
pay a TLS handshake and a credential lookup each time. Credentials come only from the
standard AWS chain (environment, profile, IRSA), never from jobgate's settings.

Every object carries its expiry and sha256 as user metadata (``x-amz-meta-expires-at``,
``x-amz-meta-sha256``); the janitor deletes through the expiry index, and a bucket
lifecycle rule on our prefix is the second line of defence where the server has one.

The store (``store``) is built from the connection and its error mapping
(``connection``), the bucket's preparation (``bucket``), the writes (``uploads``) and
the listings and deletes (``listing``).
"""

from gateway.storage.s3.store import S3Store

__all__ = ["S3Store"]
