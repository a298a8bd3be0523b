"""Code that runs inside the training job (torch, torchvision, pillow, numpy only).

train.py is started as a script (`python remote_scripts/train.py ...`), so its sibling modules
are imported as top-level modules there. The client imports the torch-free ones (imaging,
metrics, folder_dataset, progress) as `remote_scripts.X`, so that prediction, evaluation and
dataset validation use exactly the code the job uses.
"""
