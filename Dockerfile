FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY rstar rstar
COPY db db
COPY migrations migrations
COPY tasks tasks
COPY workers workers
COPY localmodels localmodels
COPY cli cli
COPY bench bench
RUN pip install --no-cache-dir .
ENTRYPOINT []
