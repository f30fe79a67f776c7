"""Which vLLM container image a machine can run, from its CUDA driver version.

The official GPU images are built against one CUDA version each; a container runs only when
the host driver supports that CUDA version (``nvmlSystemGetCudaDriverVersion()``, e.g. 13000).
The table lists the newest tag per CUDA line, newest first. Pure data, no I/O.
"""

from __future__ import annotations

from pydantic import BaseModel

GPU_REPO = "vllm/vllm-openai"
CPU_REPO = "vllm/vllm-openai-cpu"


class ImageLine(BaseModel):
    tag: str
    cuda: int            # CUDA version as NVML reports it: 13000 = 13.0
    min_driver: str      # Linux driver branch that ships that CUDA version
    note: str = ""

    @property
    def image(self) -> str:
        return f"{GPU_REPO}:{self.tag}"

    @property
    def cuda_text(self) -> str:
        return f"{self.cuda // 1000}.{(self.cuda % 1000) // 10}"


#: Newest first. The default image is the first line.
GPU_IMAGES: list[ImageLine] = [
    ImageLine(tag="v0.33.0", cuda=13000, min_driver="580.65.06", note="default image, CUDA 13.0"),
    ImageLine(tag="v0.33.0-cu129", cuda=12090, min_driver="575.51.03", note="CUDA 12.9 build"),
    ImageLine(tag="v0.10.2", cuda=12080, min_driver="570.124.06",
              note="last release before the CUDA 12.9 default; also the last with Llama 3.2 Vision"),
    ImageLine(tag="v0.8.5", cuda=12040, min_driver="550.54.14", note="oldest supported line"),
]

DEFAULT_GPU_IMAGE = GPU_IMAGES[0]


def image_for_driver(cuda_driver_version: int | None) -> ImageLine | None:
    """The newest image whose CUDA the driver can run, or None when none can."""
    if cuda_driver_version is None:
        return None
    for line in GPU_IMAGES:
        if cuda_driver_version >= line.cuda:
            return line
    return None
