"""OCI images: records (catalog), blobs in the shared content-addressed store, safe unpacking.

Images are identified by their config digest; every name (ref) and manifest digest that
points at one is kept. `run` never pulls: it only looks images up here.
"""
