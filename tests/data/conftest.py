"""Shared fixtures for the data tests: short generated audio files (never committed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf


def write_audio(path: str | Path, seconds: float = 0.5, sample_rate: int = 16000, channels: int = 1,
                kind: str = "sine", seed: int = 0) -> Path:
    """Write a short sine or noise file (format from the suffix: .wav, .flac, ...); return its path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = int(round(seconds * sample_rate))
    if kind == "sine":
        t = np.arange(n) / sample_rate
        x = 0.3 * np.sin(2 * np.pi * (220 + 40 * seed) * t)
    else:
        x = 0.1 * np.random.default_rng(seed).standard_normal(n)
    data = np.stack([x] * channels, axis=1) if channels > 1 else x
    sf.write(str(path), data.astype(np.float32), sample_rate, subtype="PCM_16")
    return path


@pytest.fixture
def make_audio():
    """``make_audio(path, seconds=0.5, sample_rate=16000, channels=1, kind='sine', seed=0)``."""
    return write_audio
