"""Which vLLM container image a machine can run, from its CUDA driver version and GPUs.

The official GPU images are built against one CUDA version each. The NVIDIA container toolkit
refuses to start one whose CUDA is newer than the host driver supports ("requirement error:
unsatisfied condition: cuda>=12.8"), so the driver's CUDA version (NVML's
``nvmlSystemGetCudaDriverVersion()``, e.g. 13000) picks the image line. Each line is also built
for a set of GPU architectures: v0.20.0 dropped Volta (sm70).

Facts and sources (vLLM release notes and PRs, NVIDIA's CUDA driver table) are in
docs/vllm-images.md. Pure data, no I/O.
"""

from __future__ import annotations

from pydantic import BaseModel

from .catalog import version_tuple

GPU_REPO = "vllm/vllm-openai"
CPU_REPO = "vllm/vllm-openai-cpu"


class ImageLine(BaseModel):
    tag: str
    vllm: str            # vLLM version inside
    cuda: int            # CUDA version as NVML reports it: 13000 = 13.0
    min_driver: str      # first Linux driver of that CUDA version
    min_cc: int          # lowest compute capability it has kernels for (x10)
    note: str = ""

    @property
    def image(self) -> str:
        return f"{GPU_REPO}:{self.tag}"

    @property
    def cuda_text(self) -> str:
        return f"{self.cuda // 1000}.{(self.cuda % 1000) // 10}"


#: Newest first; the first line is the default image.
GPU_IMAGES: list[ImageLine] = [
    ImageLine(tag="v0.33.0", vllm="0.33.0", cuda=13000, min_driver="580.65.06", min_cc=75,
              note="default image (CUDA 13.0 since v0.20.0)"),
    ImageLine(tag="v0.33.0-cu129", vllm="0.33.0", cuda=12090, min_driver="575.57.08", min_cc=75,
              note="same release built with CUDA 12.9, for R575 drivers"),
    ImageLine(tag="v0.19.1", vllm="0.19.1", cuda=12090, min_driver="575.57.08", min_cc=70,
              note="last release with Volta (V100, sm70) kernels"),
    ImageLine(tag="v0.10.2", vllm="0.10.2", cuda=12080, min_driver="570.124.06", min_cc=70,
              note="CUDA 12.8; last release with Llama 3.2 Vision (Mllama)"),
    ImageLine(tag="v0.8.5", vllm="0.8.5", cuda=12040, min_driver="550.54.15", min_cc=70,
              note="CUDA 12.4, for R550-R565 drivers"),
    ImageLine(tag="v0.6.6.post1", vllm="0.6.6", cuda=12010, min_driver="530.30.02", min_cc=70,
              note="CUDA 12.1, for R530-R545 drivers; the oldest line kanoa-local knows"),
]

DEFAULT_GPU_IMAGE = GPU_IMAGES[0]

#: The default image's CUDA by release (docs/vllm-images.md): (first release, CUDA, driver).
_CUDA_BY_RELEASE: list[tuple[tuple[int, ...], int, str]] = [
    ((0, 20), 13000, "580.65.06"), ((0, 11, 1), 12090, "575.57.08"), ((0, 9), 12080, "570.124.06"),
    ((0, 7), 12040, "550.54.15"), ((0, 6), 12010, "530.30.02"),
]


def release_tuple(vllm: str | None) -> tuple[int, ...]:
    """A vLLM release as a tuple; None (not pinned) is the newest."""
    return version_tuple(vllm) if vllm else (99,)


def _vt(v: str) -> tuple[int, ...]:
    return (version_tuple(v) + (0, 0, 0))[:3]


def release_lines(vllm: str) -> list[ImageLine]:
    """The images of exactly this release (``--vllm-version``): the lines kanoa-local knows for it,
    else its ``vX.Y.Z`` tag with that release's CUDA (docs/vllm-images.md) and architectures
    (v0.9.x images lack Volta; v0.20.0 dropped it). Releases before the oldest line, or after the
    newest, have none: the caller plans on the nearest line instead."""
    want = _vt(vllm)
    # "0.19" is that series: a line of it kanoa-local knows (v0.19.1), else its first release
    series = vllm.count(".") == 1
    known = [ln for ln in GPU_IMAGES if (_vt(ln.vllm)[:2] == want[:2] if series else _vt(ln.vllm) == want)]
    if known or not _vt(GPU_IMAGES[-1].vllm) <= want <= _vt(GPU_IMAGES[0].vllm):
        return known
    cuda, driver = next((c, d) for first, c, d in _CUDA_BY_RELEASE if want >= first + (0,) * (3 - len(first)))
    volta = want < (0, 9) or (0, 10) <= want < (0, 20)
    text = ".".join(map(str, want))
    return [ImageLine(tag=f"v{text}", vllm=text, cuda=cuda, min_driver=driver, min_cc=70 if volta else 75,
                      note=f"vLLM {text}: the release asked for, or the one installed here")]


def image_for_driver(cuda_driver_version: int | None, min_gpu_cc: int | None = None) -> ImageLine | None:
    """The newest image the driver can start and the GPU has kernels for, or None."""
    if cuda_driver_version is None:
        return None
    for line in GPU_IMAGES:
        if cuda_driver_version >= line.cuda and (min_gpu_cc is None or min_gpu_cc >= line.min_cc):
            return line
    return None
