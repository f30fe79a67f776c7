"""The dummy multimodal inputs vLLM's start-up profiling encodes, and what they cost.

vLLM profiles one modality: the one whose largest item has the most tokens, among those the
prompt limit allows (a limit of 0 takes a modality out; a modality ``--limit-mm-per-prompt``
does not name gets 999 in every V1 release). Read in the 0.8.5, 0.10.2, 0.11.0, 0.14.1, 0.19.0
and 0.33.0 wheels (qwen2_vl.py, qwen3_vl.py, multimodal/profiling.py, gpu_model_runner.py):

* Qwen2-VL / Qwen2.5-VL from 0.11: the dummy video is sized from --max-model-len, 16,384 tokens
  per frame pair up to 7 of them (``T·clamp(L // T, 1, 7)``): a long context with videos allowed
  profiles an encoder pass up to 7 × the largest image. Before 0.11 the encoded video is sized
  from max_num_batched_tokens (about one image).
* Qwen3-VL in 0.11.x: the video's budget is 12.5 × its 12,288 soft tokens (153,600), so the video
  always wins, and each encoder output is zero-padded to that many rows of the text width × 4
  (deepstack). 0.14 dropped the factor (the 0.12-0.13 wheels were not read: treated as 0.11);
  from 0.19 the dummy video is two frames (12,288 tokens), below the image.

kanoa-local's own plans pass ``"video": 0`` (the interpreter sends images); a configuration that
allows videos (vLLM's default, or ``--limit-mm-per-prompt '{"image":1,"video":1}'``) is
planned with them.
"""

from __future__ import annotations

from ..catalog import ModelEntry
from ..images import release_tuple as _release
from ..hardware import GIB

#: Image tokens vLLM's profiling feeds the encoder per image: the largest image each family's
#: processor allows (Qwen2.5-VL / Qwen3-VL: max_pixels → 16,384 tokens after the 2×2 merge;
#: Gemma 3: one 896 px crop, 256; InternVL: 12 tiles + a thumbnail of 256; Llama 4: 16 tiles +
#: a global view of 144; Molmo: crops of 144 plus pooling). vLLM V1 logs "Encoder cache will be
#: initialized with a budget of N tokens, and profiled with K image items of the maximum feature
#: size".
IMAGE_TOKENS = {"qwen2_5_vl": 16384, "qwen2_vl": 16384, "qwen3_vl": 16384, "qwen3_vl_moe": 16384,
                "gemma3": 256, "internvl": 3328, "llama4": 2448, "molmo": 1300}
#: encoder activations per image token at profiling: Qwen2.5-VL 7B's 16,384-token dummy image
#: costs about 5 GiB beyond its tower's own share (the 24 GB and H100 logs of the calibration set)
ENCODER_BYTES_PER_IMAGE_TOKEN = int(0.31 * 2**20)
#: families whose vLLM processor takes videos
VIDEO_FAMILIES = {"qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe"}
QWEN3_VIDEO_TOKENS = 12288          # 2 frames of the largest size after the merge
QWEN3_PADDED_ROWS = 153600          # 12.5 × 12,288: 0.11's encoder budget for the dummy video


def kept_bytes(entry: ModelEntry, videos: int, dtype_bytes: int, vllm: str | None = None) -> int:
    """Encoder outputs that stay in the encoder cache through the language model's dummy pass
    (its own activations are freed before it): Qwen3-VL 0.11-0.13's zero-padded video rows."""
    arch = entry.arch
    if not videos or arch is None or not (entry.family or "").startswith("qwen3") \
            or not (0, 11) <= _release(vllm) < (0, 14):
        return 0
    return QWEN3_PADDED_ROWS * arch.hidden * 4 * dtype_bytes


def video_tokens(family: str | None, vllm: str | None, max_len: int) -> int:
    """Tokens of the dummy video vLLM encodes when videos are allowed (0: the family has none)."""
    if family not in VIDEO_FAMILIES:
        return 0
    t, v = IMAGE_TOKENS[family], _release(vllm)
    if family.startswith("qwen3"):
        return QWEN3_VIDEO_TOKENS
    return t * min(max(max_len // t, 1), 7) if v >= (0, 11) else t


def encoder_bytes(entry: ModelEntry, images: int, videos: int, max_len: int, dtype_bytes: int,
                  vllm: str | None = None, batched: int = 0) -> tuple[int, str]:
    """Peak of the encoder's profiling pass (the tower's own activations and the dummy items at
    the largest size the processor allows), and what the note says it encoded.

    vLLM's dummy batch never holds more items than its encoder budget takes, ``ceil(max(
    max_num_batched_tokens, item) / item)`` (every V1 release): a prompt limit of 999 images
    profiles one 16,384-token Qwen2.5-VL image at the default 8,192 batched tokens, not 999."""
    arch = entry.arch
    assert arch is not None
    if not images and not videos:
        return 0, ""
    if entry.vision_profile_gib:
        # measured at the model's own max_num_seqs; the dummy batch scales with the sequences
        return int(entry.vision_profile_gib * GIB), f"vision encoder ({images} image{'s' if images > 1 else ''})"
    tower = int((0.4 + 1.6 * min(arch.vision_params_b, 1.0)) * GIB)
    per = IMAGE_TOKENS.get(entry.family or "", 4096)
    if batched:
        images = min(images, -(-max(batched, per) // per))
    image = per * images
    video = video_tokens(entry.family, vllm, max_len) if videos else 0
    padding = kept_bytes(entry, videos, dtype_bytes, vllm) if video else 0
    if padding:
        image = 0                       # the padded video's budget always wins
    if video > image or padding:
        # the padded outputs stay in the encoder cache through the language model's pass
        # (kept_bytes), after the encoder's own activations are freed: the larger of the two
        run = tower + video * ENCODER_BYTES_PER_IMAGE_TOKEN
        return max(run, padding), f"vision encoder (a dummy video of {video:,} tokens)"
    return tower + image * ENCODER_BYTES_PER_IMAGE_TOKEN, f"vision encoder ({images} image{'s' if images > 1 else ''})"
