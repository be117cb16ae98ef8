# The singinghead image used by docker-compose.yml for Dask workers, `singinghead serve` and the CLI.
# Same pins as a workstation (requirements.lock); GPU workers run it with the NVIDIA runtime.
FROM python:3.11-slim
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        libusb-1.0-0 libgomp1 && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/singinghead
COPY requirements.lock pyproject.toml README.md ./
RUN pip install --no-cache-dir -r requirements.lock \
    && pip install --no-cache-dir --no-deps facenet-pytorch==2.6.0
# librosa's numba gufuncs are compiled once here, not by the workers at the same moment (their
# caches can then mismatch and crash a worker: see scripts/setup.sh).
RUN python -c "import librosa.beat, librosa.util.utils"
COPY singinghead ./singinghead
COPY deploy/dask.yaml /etc/dask/singinghead.yaml
RUN pip install --no-cache-dir --no-deps -e .
ENV PYTHONUNBUFFERED=1
