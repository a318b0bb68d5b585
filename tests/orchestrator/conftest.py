from tests.state.stores import store, store_spec

__all__ = ["store", "store_spec"]
