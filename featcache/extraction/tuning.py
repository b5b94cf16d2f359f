"""The measured defaults behind every ``auto`` speed setting, and the machine they were measured on.

CPU figures: a 2-core AMD EPYC KVM guest (AVX-512), 2026-11-25, bench/extract_speed.py and
bench/extract_levers.py (tables in bench/RESULTS.md). CUDA figures: an NVIDIA H200
with 16 CPU cores, 2026-11-26, bench/gpu.py (bench/RESULTS.md section 11).
None of these values enters a feature-set id: they change speed, not numbers.
"""

from __future__ import annotations

from featcache.core.machine import usable_cores

# On CPU larger batches are *slower*: forward-only EfficientNet-Lite0 ran 57-93 img/s at batch
# 2-4 but 44-56 at 16 and 36-43 at 64; resnet18 peaked at 8-16 (~50) and fell to ~40 at 64; vgg16
# is flat (6.4-6.7 img/s at 2-4, 5.8-6.0 at 16). With 2 streams, end to end on 500 JPEGs:
# efficientnet_lite0 batch 2 ran 74-79 img/s against 63-76 at 4 and 59-65 at 8-16 (61-65 at 1);
# resnet18 batch 8 ran 48-50 against 46 at 4 and 16. channels_last was faster for all three at
# every batch > 1 (1.1-2x), so it stays on for every model. On a GPU larger is better.
CPU_BATCH_SIZES = {"tf_efficientnet_lite0": 2, "efficientnet_lite0": 2, "resnet18": 8, "vgg16": 4}
CPU_DEFAULT_BATCH = 8  # no measured model was fastest above 16; 8 is within ~10% of each one's best
# On the H200, forward-only (AMP, channels_last) grew with the batch up to 512, the largest tried: resnet50 13,343
# img/s at 128, 14,096 at 256, 14,600 at 512; vgg16 8,316 / 8,395 / 8,412; vit_b_16 6,237 / 6,470 / 6,586. 256 is
# within 4% of 512 at half the memory, and extraction end to end was bound by decoding, not by the batch.
CUDA_DEFAULT_BATCH = 256


def batch_size(arch: str, device) -> int:
    if device.type == "cuda":
        return CUDA_DEFAULT_BATCH
    return CPU_BATCH_SIZES.get(arch, CPU_DEFAULT_BATCH)


def streams(device) -> int:
    """2 on a multi-core CPU (2 x 1 thread beat 1 x 2 threads on 2 cores: lite0 72-75 vs 51-53
    img/s, resnet18 45-47 vs 41); 1 on CUDA, where one large batch fills the device."""
    if device.type == "cuda":
        return 1
    return 2 if usable_cores() >= 2 else 1


def workers(device) -> int:
    """On CUDA, every core but the main process's: decoding is the wall (H200, 16 cores, resnet50 on
    500x375 JPEGs: 8 workers 2,407 img/s steady, 15 workers 3,783; Pillow decodes one in 2.5 ms)."""
    cores = usable_cores()
    if device.type == "cuda":
        return max(1, cores - 1)
    return 1 if cores <= 2 else min(4, cores // 2)
