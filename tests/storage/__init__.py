"""Where uploads live: the file and S3 stores, the registries, the Redis connection pool."""
