"""Datasets on the client: the manifest (sha256 per image) that makes uploads incremental.

Submodules are imported by name (`from orchestrator.dataset.manifest import build_manifest`) so
that importing the package stays free of pillow and numpy.
"""
