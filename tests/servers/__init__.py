"""Real servers the test suite starts on 127.0.0.1 (no mocks): SeaweedFS for S3."""
