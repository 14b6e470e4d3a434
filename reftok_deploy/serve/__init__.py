"""The tokenizer service: encoder and decoder replicas on Ray Serve behind a versioned HTTP API."""
