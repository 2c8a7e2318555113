FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
# Every package of pyproject.toml's [tool.setuptools.packages.find] (tests/test_packaging.py checks).
COPY rstar rstar
COPY db db
COPY migrations migrations
COPY tasks tasks
COPY workers workers
COPY localmodels localmodels
COPY cli cli
COPY bench bench
COPY web web
RUN pip install --no-cache-dir .
ENTRYPOINT []
