"""One adapter per transport SDK (Kafka, Pub/Sub, Kinesis) and the registry that picks one by name.

Each adapter is the only module that imports its SDK; the rest of the worker sees only the
Source / Sink interface of `consumers.transport`."""
