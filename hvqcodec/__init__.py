"""hvqcodec: a learned image codec built on a 3-level hierarchical VQ-VAE.

    import hvqcodec
    data = hvqcodec.compress("photo.png", quality=75)     # bytes of a .hvq file
    image = hvqcodec.decompress(data)                     # PIL.Image
    samples = hvqcodec.sample(4, size=(256, 256), seed=1) # new images from the priors
"""
__version__ = "0.24.0"
__all__ = ["compress", "decompress", "sample"]


def __getattr__(name: str):
    # Lazy: `import hvqcodec` stays cheap (no torch) until the codec is used.
    if name in ("compress", "decompress"):  # without torch where the runtime runs (hvqcodec/api.py)
        from . import api
        return getattr(api, name)
    if name in __all__:
        from . import codec
        return getattr(codec, name)
    raise AttributeError(f"module 'hvqcodec' has no attribute {name!r}")
