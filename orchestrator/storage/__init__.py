"""Object stores the datasets go to and the outputs come back from (Azure Blob: `storage.blob`).

Submodules import their cloud SDKs inside functions, so importing them costs nothing at CLI start.
"""
