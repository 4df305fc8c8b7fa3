"""The generator: a grpc.aio service streaming LLM generations (see ``docs/architecture.md``)."""
