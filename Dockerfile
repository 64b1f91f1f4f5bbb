# hierot on GPU nodes: the CUDA build of the torch version in constraints.txt, hierot installed
# with the pinned versions, `python -m hierot.train` by default.
#   docker build -t hierot .
#   docker run --gpus all --shm-size=8g -v DATA:/data -v OUT:/outputs hierot \
#       data=cifar100 data.root=/data
# The tag follows the official pytorch/pytorch naming for torch 2.14.1 + CUDA 13.0 (the
# build tested here); set --build-arg BASE=... to match your drivers.
ARG BASE=pytorch/pytorch:2.14.1-cuda13.0-cudnn9-runtime
FROM ${BASE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HIEROT_OUTPUTS=/outputs

WORKDIR /opt/hierot
COPY pyproject.toml constraints.txt README.md ./
COPY hierot ./hierot
COPY scripts ./scripts
# torch==2.14.1 in the constraints is satisfied by the image's 2.14.1+cu130: pip keeps it.
RUN pip install --no-cache-dir -c constraints.txt ".[tensorboard]"

VOLUME ["/data", "/outputs"]
ENTRYPOINT ["python", "-m", "hierot.train"]
