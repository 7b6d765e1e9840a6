"""The HTTP layer: one module per endpoint family, the edge middleware, and the dashboard with
its static files. Every route is registered in one table, `gateway/app.py`."""
