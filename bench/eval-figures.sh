#!/usr/bin/env bash
# The README's eval figures: every task on the imported stories260K and the shipped pretrain / SFT checkpoints.
# Multiple-choice tasks and perplexity on every item of the developer slices; GSM8K and HumanEval on the first
# 20 items (generation on 2 CPU cores is the slow part). Results: runs/eval/<model>/{mc,gen}.json (+ samples_<task>.jsonl).
# Needs: runs/stories260K (llmctl import …), runs/pretrain (npm run demo), runs/sft (llmctl sft --config configs/sft.yaml).
set -euo pipefail
cd "$(dirname "$0")/.."
models=${MODELS:-"stories260K pretrain sft"}
for m in $models; do
  node bin/llmctl.js eval --config configs/eval.yaml --checkpoint "runs/$m" --log-level warn \
    --tasks mmlu,hellaswag,arc_easy,arc_challenge,truthfulqa_mc1,truthfulqa_mc2,perplexity --out "runs/eval/$m/mc.json"
  node bin/llmctl.js eval --config configs/eval.yaml --checkpoint "runs/$m" --limit 20 --log-level warn \
    --tasks gsm8k,humaneval --out "runs/eval/$m/gen.json"
done
