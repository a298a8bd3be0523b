"""The Azure ML control plane: job construction, provisioning, log tailing.

Every network call goes through `seam.AzureSeam`, so all the logic around it (job YAML, quota
arithmetic, status mapping, log offsets) runs and is tested without an Azure account. azure-ai-ml
costs about a second to import, so nothing here imports it at module level: `load_sdk()` does,
inside the functions that need it.
"""
import logging


def load_sdk():
    """Import azure.ai.ml and silence its INFO/"experimental class" chatter on stderr."""
    import azure.ai.ml as sdk

    logging.getLogger("azure.ai.ml").setLevel(logging.ERROR)
    return sdk
