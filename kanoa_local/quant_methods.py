"""The names vLLM accepts for --quantization: pure data, checked where a catalog file enters."""

#: vLLM's --quantization methods across the releases the planner targets (0.8.5 to 0.33: the
#: union of each release's QUANTIZATION_METHODS; bitsandbytes and gguf are built in on the
#: older ones and plugins later).
VLLM_QUANTIZATION = frozenset({
    "aqlm", "auto-round", "auto_awq", "auto_gptq", "awq", "awq_marlin", "bitblas", "bitsandbytes",
    "compressed-tensors", "deepseek_v4_fp8", "deepspeedfp", "experts_int8", "fbgemm_fp8", "fp8",
    "fp8_per_block", "fp8_per_channel", "fp8_per_tensor", "fp_quant", "gguf", "gpt_oss_mxfp4", "gptq",
    "gptq_bitblas", "gptq_marlin", "gptq_marlin_24", "hqq", "humming", "inc", "int8_per_channel_weight_only",
    "ipex", "marlin", "modelopt", "modelopt_fp4", "modelopt_mixed", "modelopt_mxfp8", "moe_wna16", "mxfp4",
    "mxfp8", "neuron_quant", "nvfp4", "nvfp4_per_token", "online", "petit_nvfp4", "ptpc_fp8", "qqq",
    "quark", "rtn", "torchao", "tpu_int8"})
