"""The WebSocket control channel in front of the broker, one concern a module:

- ``auth``: principals, the owner's and agents' scoped tokens, who may use which
  operation, and who is behind a connection;
- ``decoding``: a text message into a typed request, or the reason it is not one;
- ``operations``: what each operation does against the broker;
- ``connection``: one connection's requests, subscriptions, limits and sending;
- ``server``: listening (TCP and the Unix socket), handshakes, accepting, shutdown.
"""
