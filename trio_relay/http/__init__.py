"""One HTTP port (``trio-relay up --http``): agent-relay's HTTP API and ``/ws`` event
stream (compat.py, compat_events.py), the native control protocol over WebSocket at
``/control`` (native.py), and the dashboard (dashboard.py, static/). site.py puts them
together on hypercorn's Trio worker with starlette's router; guard.py decides who may call.
Imported only by a broker that serves HTTP.
"""
