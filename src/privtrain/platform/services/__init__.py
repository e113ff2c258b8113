"""gRPC servicers: datasets, training jobs, monitoring."""
