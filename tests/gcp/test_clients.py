"""The client factory: real Google clients wired to a local endpoint."""

from __future__ import annotations

from deployer.gcp.clients import Clients


def test_compute_clients_poll_operations_through_the_local_endpoint(localcloud):
    clients = Clients(endpoint=localcloud.endpoint)
    for client in (clients.backend_services(), clients.security_policies(), clients.url_maps()):
        # Without the fix the transport lazily builds a GlobalOperationsClient aimed at
        # https://compute.googleapis.com (clientlibs.md §0 item 2). Pin the private hook.
        poller = client._transport._global_operations_client
        assert poller is clients.global_operations()
        assert poller._transport._host == localcloud.endpoint


def test_regional_neg_client_polls_regional_operations_locally(localcloud):
    clients = Clients(endpoint=localcloud.endpoint)
    negs = clients.region_network_endpoint_groups()
    poller = negs._transport._region_operations_client
    assert poller._transport._host == localcloud.endpoint


def test_local_clients_ignore_proxy_settings(localcloud):
    clients = Clients(endpoint=localcloud.endpoint)
    assert clients.services()._transport._session.trust_env is False
    assert clients.backend_services()._transport._session.trust_env is False


def test_clients_are_built_once_per_target():
    clients = Clients(endpoint="http://127.0.0.1:1")
    assert clients.services() is clients.services()
    assert clients.is_local
