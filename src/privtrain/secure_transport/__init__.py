"""PKI, mTLS channels and servers, roles, sealed parameter envelopes."""
