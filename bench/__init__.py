"""Loopback benchmark of the S3 data path: direct backend, nginx as proxy, and s3balance.

Run it with ``python -m bench``; see ``bench/README.md`` for what it measures and why.
"""
