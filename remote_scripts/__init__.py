"""Code that runs inside the training job (torch, torchvision, pillow, numpy; never orchestrator).

Every module here is imported one way, as `remote_scripts.<name>`: the client imports the
torch-free ones (options, progress, imaging, metrics, folder_dataset, packed_dataset,
search_space, weights_catalog) so that prediction, evaluation and dataset validation use exactly
the code the job uses, and the job's entry points, started as files by every backend, first make
their folder this package (job_package.py).
"""
