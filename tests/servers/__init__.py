"""Test-only servers (a scripted OpenAI-compatible fault server)."""
