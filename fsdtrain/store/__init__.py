"""Object access (s3://, file://, retries), the zone gate every read of fleet data goes through, and the local SeaweedFS (store/local/)."""
