"""Reproducible performance figures of docingest on a private real stack: `python -m benchmarks`.

One module per figure (pipeline, backends, upload_ack, status, store, large_document,
searchable); see benchmarks/README.md for what each measures and why its ratio is fair.
"""
