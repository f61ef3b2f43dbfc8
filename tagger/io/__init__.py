"""Storage (a local folder or S3, atomic writes) and the lake locks: the only room that knows
which backend a lake root is, and the only one that imports boto3 or botocore."""
