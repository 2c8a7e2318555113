"""The I/O edge toward model servers and Celery: settings, the Celery app, model-server clients."""
