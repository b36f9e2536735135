"""The HTTP API layer: FastAPI under /v1 in front of the pipeline (docs/api.md).

The only room that imports fastapi, starlette and uvicorn; it publishes arrivals through the
transport registry and reads verdicts from `services.store`, like any platform and any worker.
"""
