"""Protocol buffers for the privtrain gRPC API (generated code is committed)."""
