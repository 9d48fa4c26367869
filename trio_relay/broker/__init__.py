"""The Trio runtime, with no network: worker processes, their supervision, the request
correlator, the event log, durable delivery, and the Broker facade over them."""
