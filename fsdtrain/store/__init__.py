"""Object store access and the local SeaweedFS endpoint."""
