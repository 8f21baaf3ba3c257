/**
 * The arena chart as SVG, drawn by Apache ECharts' server-side renderer: Bradley–Terry ratings with their
 * bootstrap 95 % intervals (left), and the pairwise win-rate heat map (right). ECharts is an optional
 * install (scripts/install-chart.sh → tools/chart/node_modules); without it there is no chart and the
 * caller says so.
 */
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import type { Interval } from './ratings.js';

const CHART_PACKAGE = fileURLToPath(new URL('../../../tools/chart/package.json', import.meta.url));

interface ECharts {
  init(dom: null, theme: null, o: { renderer: 'svg'; ssr: true; width: number; height: number }): {
    setOption(o: unknown): void;
    renderToSVGString(): string;
    dispose(): void;
  };
}

/** The ECharts module, or why it cannot be loaded. */
export function loadECharts(): ECharts | string {
  if (!existsSync(CHART_PACKAGE)) return `${CHART_PACKAGE} is missing`;
  try {
    return createRequire(CHART_PACKAGE)('echarts') as ECharts;
  } catch {
    return 'echarts is not installed (run scripts/install-chart.sh)';
  }
}

export function arenaChartSvg(echarts: ECharts, title: string, ratings: Record<string, Interval>, win: { models: string[]; winRate: number[][] }): string {
  const models = Object.keys(ratings).sort((a, b) => ratings[a]!.rating - ratings[b]!.rating); // best on top
  const n = win.models.length;
  const heat: [number, number, number | '-'][] = [];
  for (let i = 0; i < n; i++) for (let j = 0; j < n; j++) heat.push([j, n - 1 - i, Number.isNaN(win.winRate[i]![j]!) ? '-' : Number(win.winRate[i]![j]!.toFixed(3))]);
  const height = Math.max(320, 120 + 36 * Math.max(models.length, n));
  const chart = echarts.init(null, null, { renderer: 'svg', ssr: true, width: 1000, height });
  chart.setOption({
    animation: false,
    backgroundColor: '#ffffff',
    title: [
      { text: title, left: 'center', top: 6, textStyle: { fontSize: 15 } },
      { text: 'Bradley–Terry rating (95 % bootstrap interval)', left: '22%', top: 34, textAlign: 'center', textStyle: { fontSize: 12, fontWeight: 'normal' } },
      { text: 'win rate: row model beats column model', left: '74%', top: 34, textAlign: 'center', textStyle: { fontSize: 12, fontWeight: 'normal' } },
    ],
    grid: [{ left: 110, width: '33%', top: 70, bottom: 40 }, { left: '58%', right: 90, top: 70, bottom: 70 }],
    xAxis: [
      { gridIndex: 0, type: 'value', scale: true, name: 'rating', nameLocation: 'middle', nameGap: 26 },
      { gridIndex: 1, type: 'category', data: win.models, axisLabel: { rotate: 30 }, splitArea: { show: true } },
    ],
    yAxis: [
      { gridIndex: 0, type: 'category', data: models },
      { gridIndex: 1, type: 'category', data: [...win.models].reverse(), splitArea: { show: true } },
    ],
    visualMap: { seriesIndex: 2, min: 0, max: 1, calculable: false, orient: 'vertical', right: 10, top: 'middle', itemHeight: 160, inRange: { color: ['#d73027', '#ffffbf', '#1a9850'] } },
    series: [
      {
        name: '95 % interval', type: 'candlestick', xAxisIndex: 0, yAxisIndex: 0, barWidth: 6, layout: 'horizontal',
        itemStyle: { color: '#9ecae1', color0: '#9ecae1', borderColor: '#3182bd', borderColor0: '#3182bd' },
        data: models.map((m) => [ratings[m]!.lower, ratings[m]!.upper, ratings[m]!.lower, ratings[m]!.upper]),
      },
      {
        name: 'rating', type: 'scatter', xAxisIndex: 0, yAxisIndex: 0, symbolSize: 10, itemStyle: { color: '#08519c' },
        label: { show: true, position: 'top', formatter: (p: { value: [number, string] }) => p.value[0].toFixed(0) },
        data: models.map((m) => [ratings[m]!.rating, m]),
      },
      {
        name: 'win rate', type: 'heatmap', xAxisIndex: 1, yAxisIndex: 1, label: { show: true, formatter: (p: { value: [number, number, number | '-'] }) => (p.value[2] === '-' ? '' : (p.value[2] as number).toFixed(2)) },
        data: heat,
      },
    ],
  });
  const svg = chart.renderToSVGString();
  chart.dispose();
  return svg;
}
