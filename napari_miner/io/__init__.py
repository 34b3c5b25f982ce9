"""Storage: the model store, lazy dask pyramids, export."""
