"""Test utilities shipped with aistream: a fake OpenAI-compatible upstream (``fake_upstream``)."""
