# The image that Prefect workers run for product-tagger: CUDA PyTorch + the package.
#   docker build -t registry.example.com/product-tagger:$(git rev-parse --short HEAD) .
# No secrets are baked in: S3 (AWS_*) and Prefect (PREFECT_API_URL, PREFECT_API_KEY)
# settings come from the work pool's environment when a flow run starts.
#
# torch and torchvision are the versions the test suite runs on (torch 2.14.1+cu130,
# torchvision 0.29.1+cu130); tests/test_docker.py fails when these pins and the tested
# versions part. The base is PyTorch's image for that torch release (CUDA 13.0 runtime,
# cuDNN 9; its tag follows their naming: this image is not built in CI, which has no Docker
# engine), so pip keeps its torch and installs only the rest; should the base carry another
# torch, pip takes the pinned one from TORCH_INDEX_URL and the build checks the result.
ARG TORCH_VERSION=2.14.1
ARG TORCHVISION_VERSION=0.29.1
ARG CUDA_VERSION=13.0
FROM pytorch/pytorch:${TORCH_VERSION}-cuda${CUDA_VERSION}-cudnn9-runtime

ARG TORCH_VERSION
ARG TORCHVISION_VERSION
# Where pip finds torch/torchvision if the base lacks one: the CUDA build of the base's CUDA.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu130

# The base's Python is the system one, which PEP 668 marks as externally managed; in this
# image it is the only Python, so pip installs into it.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_BREAK_SYSTEM_PACKAGES=1 \
    TAGGER_WORKDIR=/opt/product-tagger

WORKDIR /opt/product-tagger

# Only what the package needs (.dockerignore keeps tests, lakes and .venv out), installed in
# one layer without pip's cache. Prefect's pull step (prefect.yaml) chdirs here, where the
# flow entrypoints (flows/*.py) live.
COPY pyproject.toml README.md ./
COPY catalog_schemas ./catalog_schemas
COPY tagger ./tagger
COPY flows ./flows
# torch and torchvision are pinned in both installs, so a dependency that wanted other
# versions fails the build instead of swapping the CUDA build for another one; the last
# line refuses an image whose torch/torchvision are not the pinned releases.
RUN python3 -m pip install --no-cache-dir --index-url "${TORCH_INDEX_URL}" \
        "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}" \
    && python3 -m pip install --no-cache-dir . "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}" \
    && python3 -c "import sys, torch, torchvision; \
v = (torch.__version__.split('+')[0], torchvision.__version__.split('+')[0]); \
sys.exit(0 if v == ('${TORCH_VERSION}', '${TORCHVISION_VERSION}') else f'image has torch/torchvision {v}')" \
    && useradd --create-home --uid 10001 --shell /usr/sbin/nologin tagger

# Flow runs never run as root. Caches (timm weights from the hub) go to the user's home.
USER 10001
ENV HOME=/home/tagger

CMD ["prefect", "version"]
