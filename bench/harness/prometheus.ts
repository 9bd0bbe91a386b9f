/** Sum of the samples of one metric in a Prometheus text exposition whose labels include `labels` (0 when absent). */
export function metricSum(text: string, name: string, labels: Record<string, string> = {}): number {
  let total = 0
  for (const line of text.split('\n')) {
    if (!line.startsWith(name)) continue
    const m = /^([^{\s]+)(?:\{([^}]*)\})?\s+(\S+)/.exec(line)
    if (!m || m[1] !== name) continue
    const have = new Map([...(m[2] ?? '').matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)].map((x) => [x[1], x[2]]))
    if (Object.entries(labels).every(([k, v]) => have.get(k) === v)) total += Number(m[3])
  }
  return total
}

export async function scrape(url: string): Promise<string> {
  const res = await fetch(`${url}/metrics`)
  if (!res.ok) throw new Error(`GET ${url}/metrics: ${res.status}`)
  return res.text()
}
