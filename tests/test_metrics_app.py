"""The metrics plugin's ASGI app on its own (Starlette's TestClient, no broker, no socket)."""

from __future__ import annotations

from starlette.testclient import TestClient

from rabbitworker.metrics import MetricsPlugin


def client_of(plugin: MetricsPlugin) -> TestClient:
    return TestClient(plugin.app())


def test_readyz_is_503_until_connected_and_consuming_every_queue() -> None:
    plugin = MetricsPlugin()
    client = client_of(plugin)
    assert client.get("/readyz").status_code == 503

    plugin.rabbitworker_connection_changed(connected=True)
    plugin.rabbitworker_consumer_changed(queue="a.q", consuming=True)
    response = client.get("/readyz")

    assert response.status_code == 200
    assert response.text == "connected: yes\na.q: consuming\n"


def test_healthz_answers_ok_while_the_loop_beats() -> None:
    response = client_of(MetricsPlugin()).get("/healthz")

    assert (response.status_code, response.text) == (200, "ok\n")


def test_metrics_are_prometheus_text() -> None:
    plugin = MetricsPlugin()
    plugin.rabbitworker_connection_changed(connected=True)
    response = client_of(plugin).get("/metrics")

    assert response.headers["content-type"].startswith("text/plain; version=")
    assert "rabbitworker_connected 1.0" in response.text


def test_an_unknown_path_is_404_pointing_at_metrics() -> None:
    response = client_of(MetricsPlugin()).get("/nope")

    assert (response.status_code, response.text) == (404, "not found: try /metrics\n")
