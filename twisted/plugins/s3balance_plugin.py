from twisted.application.service import ServiceMaker

s3balance = ServiceMaker(
    "s3balance", "s3balance.tap", "An S3-compatible load balancer over many real buckets.",
    "s3balance",
)
