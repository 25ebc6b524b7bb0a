# lipschitz-lightning on a CUDA build of the pinned torch.
#
#   docker build -t lipschitz-lightning .
#   docker run --gpus all -v $PWD/data:/data -v $PWD/logs:/workspace/lipschitz-lightning/logs \
#       lipschitz-lightning model=densenet40 optim=adamo
#   docker run --gpus all --shm-size=8g ... lipschitz-lightning trainer=ddp trainer.devices=4
#
# The base image carries torch 2.14.1 (CUDA 12.8, cuDNN 9), matching the torch==2.14.1 pin in
# pyproject.toml, so pip keeps it instead of fetching another build. If your registry names the
# tag differently, pick the pytorch/pytorch runtime tag of torch 2.14.1 for your CUDA version.
FROM pytorch/pytorch:2.14.1-cuda12.8-cudnn9-runtime

WORKDIR /workspace/lipschitz-lightning

# Dependencies first (cached while only the code changes), then the package, editable: the
# entry point reads its configs from ./conf next to the package.
COPY pyproject.toml README.md ./
COPY lipschitz_lightning ./lipschitz_lightning
COPY conf ./conf
RUN pip install --no-cache-dir torch==2.14.1 torchvision==0.29.1 \
 && pip install --no-cache-dir -e .

# Datasets are read from (and downloaded to) /data; runs write to ./logs. Mount both.
ENV LIPSCHITZ_DATA=/data
VOLUME ["/data", "/workspace/lipschitz-lightning/logs"]

# Arguments after the image name are Hydra overrides: `docker run ... lipschitz-lightning optim=adamo`.
ENTRYPOINT ["python", "-m", "lipschitz_lightning.train"]
