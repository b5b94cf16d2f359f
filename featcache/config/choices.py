"""Every choice list a setting takes, defined once: the records check against these tuples and the CLI
builds its ``click.Choice`` options from them, so a new value is one edit.

Standard library only: cli.py imports this before any command runs (``featcache --help`` stays instant).
"""

from __future__ import annotations

AUTO = "auto"  # a speed setting this machine resolves (batch size, workers, streams, device, precision)

DTYPES = ("float16", "float32")  # storage precision of the features
# --pool: none keeps the layer's output; avg and max reduce a map's positions or all of a token sequence;
# cls takes a token sequence's class token, avg_patch averages its patch tokens (class and register tokens left out).
POOLS = ("none", "avg", "max", "cls", "avg_patch")
PRECISIONS = (AUTO, "fp32", "fp16", "bf16")  # numeric precision of the forward pass (auto: fp16 on CUDA, fp32 on CPU)
ON_ERROR = ("skip", "fail")  # an image that cannot be used: a skipped row with its reason, or stop
DECODERS = ("cpu", "gpu")  # Pillow in the workers, or JPEG batches decoded on the device
# Where the work runs, for extraction (--engine) and for the fit's grid search (--backend) alike.
BACKENDS = ("local", "ray")
# Feature sets with views: score a CV/test image by the head's output averaged over its views, or by view 0 only.
AT_TEST = ("mean", "first")


def one_of(choices: tuple[str, ...]) -> str:
    """``("a", "b", "c")`` -> ``"a, b or c"``: the choices as a message names them."""
    return " or ".join(filter(None, [", ".join(choices[:-1]), choices[-1]]))
