"""The WebSocket control channel: who a connection is (tokens, peers), and serving requests
and subscriptions to the broker."""
