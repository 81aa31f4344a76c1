"""Tests of the audio half of the audiobook pipeline: room tone, chapter assembly, encoding."""
