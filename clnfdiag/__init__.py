"""clnfdiag: an instrumented CLNF (OpenFace 2.x) and a stage-by-stage comparator."""
__version__ = "0.1.0"
