"""One factory for every Google client deployer uses, for real Google or a local endpoint.

- Google: Application Default Credentials (google-auth), the libraries' default endpoints.
- Local (``endpoint="http://127.0.0.1:P"``): REST transport, anonymous credentials, no proxy
  (``requests`` would otherwise send loopback calls through ``HTTP_PROXY``), and the fix for
  Compute's operation poller, which the transport builds lazily *without* our client_options and
  so would poll ``https://compute.googleapis.com`` (clientlibs.md §0 item 2).

``google.cloud.compute_v1`` takes over a second to import, so each client is built (and its
library imported) only when first asked for.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Clients:
    """Lazily built clients for one target. ``endpoint=None`` means real Google."""

    endpoint: str | None = None
    project: str | None = None
    _cache: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def is_local(self) -> bool:
        return self.endpoint is not None

    def _options(self) -> dict[str, Any]:
        from google.api_core.client_options import ClientOptions

        if self.endpoint is None:
            return {}
        from google.auth.credentials import AnonymousCredentials

        return {
            "credentials": AnonymousCredentials(),
            "transport": "rest",
            "client_options": ClientOptions(api_endpoint=self.endpoint),
        }

    def _memo(self, key: str, build: Any) -> Any:
        if key not in self._cache:
            try:
                client = build()
            except Exception as exc:
                # Real Google without Application Default Credentials fails here, at construction
                # (google.auth.default), before any call: one error line with the fix, not a traceback.
                import google.auth.exceptions as gauth

                if not isinstance(exc, gauth.GoogleAuthError):
                    raise
                from deployer.errors import CloudError

                raise CloudError(
                    f"no usable Google credentials for the {key} client: {' '.join(str(exc).split()).split('. ')[0]}",
                    method=f"{key} client",
                    hint="run `gcloud auth application-default login` (or set GOOGLE_APPLICATION_CREDENTIALS), "
                    "or give the config an `endpoint:` to target the local cloud",
                ) from exc
            if self.endpoint is not None:
                _no_proxy(client)
            self._cache[key] = client
        return self._cache[key]

    # ---- Cloud Run v2 ---------------------------------------------------------------------
    def services(self) -> Any:
        def build() -> Any:
            from google.cloud import run_v2

            opts = self._options() or {"transport": "rest"}
            return run_v2.ServicesClient(**opts)

        return self._memo("services", build)

    def revisions(self) -> Any:
        def build() -> Any:
            from google.cloud import run_v2

            opts = self._options() or {"transport": "rest"}
            return run_v2.RevisionsClient(**opts)

        return self._memo("revisions", build)

    # ---- Compute v1 -----------------------------------------------------------------------
    def global_operations(self) -> Any:
        def build() -> Any:
            from google.cloud import compute_v1

            return compute_v1.GlobalOperationsClient(**self._options())

        return self._memo("global_operations", build)

    def region_operations(self) -> Any:
        def build() -> Any:
            from google.cloud import compute_v1

            return compute_v1.RegionOperationsClient(**self._options())

        return self._memo("region_operations", build)

    def _compute(self, key: str, cls_name: str, ops: str = "global_operations") -> Any:
        def build() -> Any:
            from google.cloud import compute_v1

            client = getattr(compute_v1, cls_name)(**self._options())
            if self.endpoint is not None:
                fix_operation_poller(client, getattr(self, ops)(), kind=ops)
            return client

        return self._memo(key, build)

    def backend_services(self) -> Any:
        return self._compute("backend_services", "BackendServicesClient")

    def security_policies(self) -> Any:
        return self._compute("security_policies", "SecurityPoliciesClient")

    def url_maps(self) -> Any:
        return self._compute("url_maps", "UrlMapsClient")

    def region_network_endpoint_groups(self) -> Any:
        return self._compute("region_negs", "RegionNetworkEndpointGroupsClient", ops="region_operations")

    # ---- Cloud Storage --------------------------------------------------------------------
    def storage(self) -> Any:
        def build() -> Any:
            from google.cloud import storage

            if self.endpoint is None:
                return storage.Client(project=self.project)
            from google.auth.credentials import AnonymousCredentials

            return storage.Client(
                project=self.project or "local-project",
                credentials=AnonymousCredentials(),
                client_options={"api_endpoint": self.endpoint},
            )

        return self._memo("storage", build)


def fix_operation_poller(client: Any, ops_client: Any, kind: str = "global_operations") -> None:
    """Make a Compute client poll its ExtendedOperations through ``ops_client`` (our endpoint).

    The generated transport keeps lazily-built operation clients in
    ``_extended_operations_services``; pre-filling it is the only hook (pinned by a test).
    """
    client._transport._extended_operations_services[kind] = ops_client


def _no_proxy(client: Any) -> None:
    """Loopback calls must never go through HTTP(S)_PROXY."""
    session = getattr(getattr(client, "_transport", None), "_session", None)
    if session is None:
        session = getattr(client, "_http", None)
    if session is not None and hasattr(session, "trust_env"):
        session.trust_env = False


@functools.lru_cache(maxsize=8)
def clients_for(endpoint: str | None, project: str | None = None) -> Clients:
    """Shared clients per target within one process."""
    return Clients(endpoint=endpoint, project=project)
