#!/usr/bin/env bash
# Installs the optional charting library (Apache ECharts, Apache-2.0) that `llmctl arena` uses for its SVG
# charts, into tools/chart/node_modules. Without it the arena still rates and writes JSON, and says the chart was skipped.
set -euo pipefail
cd "$(dirname "$0")/../tools/chart"
npm install --no-audit --no-fund --omit=dev
