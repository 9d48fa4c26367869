"""Brokers on several hosts sharing agents and delivery through PostgreSQL.

``sql`` holds the schema and every statement (no Trio); ``database`` runs them in worker
threads and listens for notifications; ``member`` is one broker's membership: its lease,
its agents in the registry, the claim/ack protocol, and the cluster-wide operations.
Imported only by a broker started with ``--cluster`` (psycopg is not imported otherwise).
"""
