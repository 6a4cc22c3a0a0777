"""The web console, ``rabbitworker-host console``: queues, dead letters, replay, topology.

A separate process (like Flower for Celery) that needs only AMQP and the management API:

- :mod:`.letters`: browsing a DLQ page by page without changing it, filters, one message;
- :mod:`.management`: queue depths, consumers and rates from RabbitMQ's management API;
- :mod:`.auth`: the token, sessions and CSRF;
- :mod:`.drawing`: the topology as a server-side SVG;
- :mod:`.app`: the Starlette app tying them together; the page itself is ``static/``.
"""
