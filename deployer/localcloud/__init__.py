"""The embedded local Google Cloud: Cloud Run v2, Compute (load balancing, Cloud Armor) and Cloud
Storage JSON APIs, served over real HTTP so that the unmodified Google client libraries talk to it.

Layout (moto-style): ``world.py`` holds all state and the shared sources of ids and time;
``api/<name>/models.py`` is each API's state and rules; ``api/<name>/responses.py`` parses requests and
renders responses with the client libraries' own message classes and exports ``ROUTES`` (routing as
data); ``api/control.py`` is the ``/_localcloud/`` control plane; ``server.py`` builds the aiohttp app
and runs it; ``runtime/`` runs revisions as processes behind a WebSocket-capable load balancer.
"""
