"""lz4 and zstd: command lines for streaming compression and decompression (stdin to stdout)."""

from __future__ import annotations

CODECS = ("none", "lz4", "zstd")
SUFFIX = {"none": "", "lz4": ".lz4", "zstd": ".zst"}


def compressor(codec: str, *, level: int | None = None) -> list[str] | None:
    """The filter that compresses a stream, or None for `none`."""
    if codec == "none":
        return None
    if codec == "lz4":
        return ["lz4", "-q", "-c", *([f"-{level}"] if level else [])]
    if codec == "zstd":
        return ["zstd", "-q", "-c", "-T0", f"-{level or 3}"]
    raise ValueError(f"unknown codec {codec!r}")


def decompressor(codec: str) -> list[str] | None:
    if codec == "none":
        return None
    if codec == "lz4":
        return ["lz4", "-q", "-d", "-c"]
    if codec == "zstd":
        return ["zstd", "-q", "-d", "-c"]
    raise ValueError(f"unknown codec {codec!r}")


def codec_of_file(name: str) -> str:
    for codec, suffix in SUFFIX.items():
        if suffix and name.endswith(suffix):
            return codec
    return "none"
