"""Audio files for the media tests: a tone as 8 kHz WAV, linear PCM or G.711 mu-law."""

from __future__ import annotations

import math
import struct
import wave
from pathlib import Path

RATE = 8000


def _samples(seconds: float, frequency: float) -> list[int]:
    return [
        int(12000 * math.sin(2 * math.pi * frequency * n / RATE))
        for n in range(int(RATE * seconds))
    ]


def write_pcm_wav(path: Path, seconds: float = 3.0, frequency: float = 440.0) -> Path:
    """16-bit mono 8 kHz PCM (what baresip's aufile module plays)."""
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(RATE)
        samples = _samples(seconds, frequency)
        out.writeframes(struct.pack(f"<{len(samples)}h", *samples))
    return path


def _mulaw(sample: int) -> int:
    """G.711 mu-law encoding of one 16-bit sample."""
    bias, clip = 0x84, 32635
    sign = 0x80 if sample < 0 else 0
    magnitude = min(abs(sample), clip) + bias
    exponent = max(0, magnitude.bit_length() - 8)
    mantissa = (magnitude >> (exponent + 3)) & 0x0F
    return ~(sign | (exponent << 4) | mantissa) & 0xFF


def write_mulaw_wav(path: Path, seconds: float = 3.0, frequency: float = 440.0) -> Path:
    """A WAVE_FORMAT_MULAW file (format 7): SIPp's rtp_stream sends it as PCMU."""
    data = bytes(_mulaw(s) for s in _samples(seconds, frequency))
    header = b"RIFF" + struct.pack("<I", 4 + 26 + 8 + len(data)) + b"WAVE"
    fmt = b"fmt " + struct.pack("<IHHIIHHH", 18, 7, 1, RATE, RATE, 1, 8, 0)
    path.write_bytes(header + fmt + b"data" + struct.pack("<I", len(data)) + data)
    return path
