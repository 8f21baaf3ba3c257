/** parse-prometheus-text-format 1.1.1 ships no types: a Prometheus exposition text → prom2json's JSON shape. */
declare module 'parse-prometheus-text-format' {
  export interface PromFamily {
    name: string;
    help: string;
    type: 'COUNTER' | 'GAUGE' | 'HISTOGRAM' | 'SUMMARY' | 'UNTYPED';
    metrics: { value?: string; labels?: Record<string, string>; buckets?: Record<string, string>; count?: string; sum?: string }[];
  }
  export default function parsePrometheusTextFormat(text: string): PromFamily[];
}
