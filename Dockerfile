# llmctl on a CUDA host: tfjs-node-gpu 4.22 is built against CUDA 11.2 + cuDNN 8.
#   docker build -t llmctl .
#   docker run --gpus all -v $PWD/runs:/app/runs llmctl pretrain --config configs/pretrain.yaml
FROM nvidia/cuda:11.2.2-cudnn8-runtime-ubuntu20.04

ARG NODE_VERSION=20.18.1
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl xz-utils python3 make g++ \
 && curl -fsSL https://nodejs.org/dist/v${NODE_VERSION}/node-v${NODE_VERSION}-linux-x64.tar.xz | tar -xJ -C /usr/local --strip-components=1 \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY package.json package-lock.json tsconfig.json ./
COPY src ./src
COPY bin ./bin
# The optional native backends download libtensorflow in their install scripts; here (with internet) they succeed.
RUN npm ci --no-audit --no-fund
COPY configs ./configs
COPY data ./data

# auto picks tensorflow (GPU) first; the log line "using tfjs backend" says which one runs.
ENTRYPOINT ["node", "bin/llmctl.js"]
CMD ["--help"]
