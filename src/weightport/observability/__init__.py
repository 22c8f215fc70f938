"""What operators watch: Prometheus metrics and structured log lines.

- :mod:`.metrics` — every metric weightport exports, defined once, with bounded labels.
- :mod:`.exposition` — rendering them for ``/metrics``, in one process or across the worker
  processes of ``serve --workers N`` (prometheus-client's multiprocess mode).
- :mod:`.log_format` — one log line as logfmt or JSON (the access log's two formats).

Nothing here knows HTTP, the catalog or the store: the server, the catalog and the services
record into these metrics; the server renders them.
"""
