"""S3 request authentication: SigV4 (header, presigned, aws-chunked), SigV2, scoped keys."""
