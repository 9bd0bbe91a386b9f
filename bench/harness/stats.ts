/** Latency samples and their percentiles (nearest rank), in milliseconds. */

export interface Percentiles {
  p50: number
  p90: number
  p99: number
  max: number
  /** Number of samples the percentiles come from. */
  samples: number
}

/** Growable array of float samples: cheap to push from a hot loop, sorted once at the end. */
export class Samples {
  private values = new Float64Array(1024)
  private n = 0

  push(value: number): void {
    if (this.n === this.values.length) {
      const grown = new Float64Array(this.values.length * 2)
      grown.set(this.values)
      this.values = grown
    }
    this.values[this.n++] = value
  }

  get count(): number {
    return this.n
  }

  percentiles(): Percentiles | undefined {
    if (this.n === 0) return undefined
    const sorted = this.values.slice(0, this.n).sort()
    const at = (q: number): number => sorted[Math.min(this.n - 1, Math.max(0, Math.ceil(q * this.n) - 1))]!
    return { p50: at(0.5), p90: at(0.9), p99: at(0.99), max: sorted[this.n - 1]!, samples: this.n }
  }
}

/** Rounds to a few significant digits for tables and JSON (figures from a shared machine are not more precise). */
export function round(value: number, digits = 3): number {
  if (!Number.isFinite(value) || value === 0) return value
  const magnitude = Math.floor(Math.log10(Math.abs(value)))
  const factor = 10 ** (digits - 1 - magnitude)
  return Math.round(value * factor) / factor
}
