# lipschitz-lightning on the CUDA build of the pinned torch, as a non-root user.
#
#   docker build -t lipschitz-lightning .
#   docker run --gpus all --user $(id -u):$(id -g) -v $PWD/data:/data -v $PWD/logs:/workspace/logs \
#       lipschitz-lightning model=densenet40 optim=adamo trainer=gpu
#   docker run --gpus all --shm-size=8g ... lipschitz-lightning trainer=ddp trainer.devices=4
#
# Arguments after the image name are Hydra overrides (the entry point is `lipschitz-train`).
# Datasets are read from (and downloaded to) the /data volume; runs write to the /workspace/logs
# volume. The image runs as the unprivileged user `lipschitz` (uid 1000); `--user $(id -u):$(id -g)`
# makes the files it writes on mounted folders yours.
#
# torch comes from PyTorch's CUDA wheel index (TORCH_CUDA, default cu130: CUDA 13.0, bundled with
# the wheel; the host needs only the NVIDIA driver and the container toolkit), pinned to the same
# torch==2.14.1 / torchvision==0.29.1 as pyproject.toml, so the package install keeps it.
FROM python:3.11-slim

ARG TORCH_CUDA=cu130
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1

RUN useradd --create-home --uid 1000 --shell /bin/bash lipschitz \
 && mkdir -p /data /workspace/logs \
 && chown -R lipschitz:lipschitz /data /workspace

# torch first: the biggest layer, cached while only the code changes.
RUN pip install torch==2.14.1 torchvision==0.29.1 --extra-index-url https://download.pytorch.org/whl/${TORCH_CUDA}

# The package with the application and the competitor optimizers, built as a wheel (the configs
# ship inside it); the build folder is removed.
WORKDIR /opt/lipschitz-lightning
COPY pyproject.toml setup.py MANIFEST.in README.md ./
COPY conf ./conf
COPY lipschitz_lightning ./lipschitz_lightning
RUN pip install ".[app,competitors]" \
 && rm -rf build *.egg-info

USER lipschitz
WORKDIR /workspace
ENV LIPSCHITZ_DATA=/data
VOLUME ["/data", "/workspace/logs"]

ENTRYPOINT ["lipschitz-train"]
