"""aistream: schema-first streaming of LLM generations."""
