# The image that Prefect workers run for product-tagger: CUDA PyTorch + the package.
#   docker build -t registry.example.com/product-tagger:$(git rev-parse --short HEAD) .
# No secrets are baked in: S3 (AWS_*) and Prefect (PREFECT_API_URL, PREFECT_API_KEY)
# settings come from the work pool's environment when a flow run starts.
#
# The base image brings CUDA, cuDNN and torch/torchvision (>= our torch>=2.4 floor), so pip
# keeps them and installs only the rest (timm, albumentations, prefect, ...).
FROM pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TAGGER_WORKDIR=/opt/product-tagger

WORKDIR /opt/product-tagger

# Only what the package needs (.dockerignore keeps tests, lakes and .venv out), installed in
# one layer without pip's cache. Prefect's pull step (prefect.yaml) chdirs here, where the
# flow entrypoints (flows/*.py) live.
COPY pyproject.toml README.md ./
COPY catalog_schemas ./catalog_schemas
COPY tagger ./tagger
COPY flows ./flows
RUN pip install --no-cache-dir . \
    && useradd --create-home --uid 10001 --shell /usr/sbin/nologin tagger

# Flow runs never run as root. Caches (timm weights from the hub) go to the user's home.
USER 10001
ENV HOME=/home/tagger

CMD ["prefect", "version"]
