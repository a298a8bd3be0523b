# The training environment of orchestrate on Azure ML (Environment(build=BuildContext(path=infra/docker,
# dockerfile_path="azureml.Dockerfile"))): the same context, requirements and check as the Dockerfile
# of `--backend docker`, on a different base. Why a second file: Azure ML's BuildContext takes no
# build arguments, and its image is built by ACR Tasks, where an anonymous Docker Hub pull (the
# docker backend's pytorch/pytorch default) hits "toomanyrequests" rate limits.
#
# Base: Azure ML's curated ACPT PyTorch image from the Microsoft Container Registry (source:
# Azure/azureml-assets, assets/training/general/environments/acpt-pytorch-2.2-cuda12.1). The tag is the
# curated asset's version, not a digest, and the name no longer tells the torch version: the asset is
# rebuilt about every two weeks, and its context/Dockerfile at commit 87059914 builds on
# aifx/acpt/stable-ubuntu2204-cu118-py310-torch271 (which commit :42 came from is not known). It carries azureml-mlflow (context/requirements.txt),
# so train.py's Reporter logs each epoch's metrics to the job's MLflow run and they appear in Studio.
FROM mcr.microsoft.com/azureml/curated/acpt-pytorch-2.2-cuda12.1:42

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    LANG=C.UTF-8

# The job's requirements (onnx is not in every ACPT build), then MLflow for Azure ML: installed only
# when the base lacks them (missing_requirements.py), so a base that carries them is left unchanged.
COPY requirements.txt azureml-requirements.txt missing_requirements.py /opt/orchestrate/
RUN set -- $(python3 /opt/orchestrate/missing_requirements.py /opt/orchestrate/requirements.txt) \
           $(python3 /opt/orchestrate/missing_requirements.py /opt/orchestrate/azureml-requirements.txt) \
 && if [ $# -gt 0 ]; then \
      echo "installing: $*" && python3 -m pip install --no-cache-dir "$@"; \
    else echo "requirements already satisfied by the base image"; fi

RUN command -v python >/dev/null || ln -s "$(command -v python3)" /usr/local/bin/python

# Fail the image build, not the job, when a rebuilt base lost one of what train.py, the ONNX export,
# score_entry.py and the MLflow logging import.
RUN python -c "import torch, torchvision, onnx, onnxruntime, mlflow"

WORKDIR /code
CMD ["python", "/code/train.py", "--help"]
