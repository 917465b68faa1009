"""s3balance: an S3-compatible load balancer that pools many real buckets into virtual ones."""

__version__ = "0.1.0"
