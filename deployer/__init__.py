"""deployer: phased Cloud Run + load balancer + Cloud Armor deploys for WebSocket services, with rollback."""

__version__ = "0.1.0"
