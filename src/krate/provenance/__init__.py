"""Build records: the content-addressed artifact store and in-toto / SLSA provenance.

Domain code only: it never prints, never reads the environment and never talks
SQL (the index rows go through krate.store.artifacts).
"""
