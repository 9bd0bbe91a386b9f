import { type ChildProcess, spawn } from 'node:child_process'
import { createWriteStream, readFileSync } from 'node:fs'
import { join } from 'node:path'
import { createInterface } from 'node:readline'
import { projectRoot } from '../../core/paths.js'

/**
 * Processes under test. Every Tally role and every peer runs in a child process of its own, so its
 * CPU and memory are its own: peak RSS is the kernel's high-water mark of that process (VmHWM), not
 * the bench's, which holds workloads and the load generator.
 */

export interface Child {
  readonly name: string
  readonly pid: number
  /** Where its stdout and stderr go. */
  readonly logFile: string
  /** What the ready line gave (a URL for servers). */
  ready: Record<string, unknown>
  /** Peak resident set size so far (bytes), from /proc; undefined once it exited or off Linux. */
  peakRssBytes(): number | undefined
  /** SIGTERM, then SIGKILL after `graceMs`; resolves when it exited. Repeat-safe. */
  stop(graceMs?: number): Promise<void>
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>
}

const running = new Set<Child>()
// Whatever ends this process (a crash included), the roles it started do not outlive it.
process.once('exit', () => {
  for (const c of running) {
    try {
      process.kill(c.pid, 'SIGKILL')
    } catch {
      // Already gone.
    }
  }
})

/** Children still running (for the emergency stop on SIGINT or a crash). */
export function runningChildren(): Child[] {
  return [...running]
}

/** VmHWM of a process (its peak RSS) in bytes, from /proc/<pid>/status. */
export function peakRssOfPid(pid: number): number | undefined {
  try {
    const status = readFileSync(`/proc/${pid}/status`, 'utf8')
    const m = /^VmHWM:\s+(\d+)\s+kB$/m.exec(status)
    return m ? Number(m[1]) * 1024 : undefined
  } catch {
    // The process is gone (or this is not Linux): there is no figure to give.
    return undefined
  }
}

export interface SpawnOptions {
  name: string
  /** Script path and arguments for `node`. */
  args: string[]
  env: Record<string, string>
  /** Folder for the log file. */
  logDir: string
  /** Returns the ready information when a stdout or stderr line says the process is ready, else undefined. */
  isReady: (line: string) => Record<string, unknown> | undefined
  /** Default 60000 ms. */
  readyTimeoutMs?: number
}

let counter = 0

/**
 * Node's arguments for a child: with TALLY_BENCH_CPU_PROF=DIR every role and job the bench starts
 * writes a V8 CPU profile into DIR when it exits (open it in Chrome DevTools or speedscope);
 * TALLY_BENCH_NODE_FLAGS adds Node flags of its own (space-separated, e.g.
 * `--heapsnapshot-signal=SIGUSR2` to take heap snapshots of a role while it runs).
 */
function nodeArgs(args: readonly string[]): string[] {
  const dir = process.env.TALLY_BENCH_CPU_PROF
  const flags = (process.env.TALLY_BENCH_NODE_FLAGS ?? '').split(' ').filter((f) => f !== '')
  return [...(dir ? ['--cpu-prof', `--cpu-prof-dir=${dir}`] : []), ...flags, ...args]
}

/** Starts `node <args>` and waits for its ready line. */
export async function spawnNode(options: SpawnOptions): Promise<Child> {
  const logFile = join(options.logDir, `${options.name}-${++counter}.log`)
  const log = createWriteStream(logFile)
  const child: ChildProcess = spawn(process.execPath, nodeArgs(options.args), {
    cwd: projectRoot(),
    env: { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '', ...options.env },
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    // 'close' comes after the output streams ended, so the log file is complete by then.
    child.once('close', (code, signal) => resolve({ code, signal })),
  )
  const pid = child.pid
  if (pid === undefined) throw new Error(`${options.name}: could not start node ${options.args.join(' ')}`)
  // Tally logs (the ready line among them) on stderr; peers such as bare-fastify print theirs on stdout.
  const lines = [createInterface({ input: child.stdout! }), createInterface({ input: child.stderr! })]
  const ready = new Promise<Record<string, unknown>>((resolve, reject) => {
    const timer = setTimeout(
      () =>
        reject(
          new Error(
            `${options.name}: not ready within ${options.readyTimeoutMs ?? 60_000} ms (log ${logFile})`,
          ),
        ),
      options.readyTimeoutMs ?? 60_000,
    )
    let done = false
    const onLine = (line: string) => {
      log.write(`${line}\n`)
      if (done) return
      const info = options.isReady(line)
      if (info) {
        done = true
        clearTimeout(timer)
        resolve(info)
      }
    }
    for (const input of lines) input.on('line', onLine)
    void exited.then(({ code, signal }) => {
      clearTimeout(timer)
      if (!done)
        reject(new Error(`${options.name}: exited (${code ?? signal}) before it was ready (log ${logFile})`))
    })
  })
  let stopping: Promise<void> | undefined
  const handle: Child = {
    name: options.name,
    pid,
    logFile,
    ready: {},
    exited,
    peakRssBytes: () => peakRssOfPid(pid),
    stop(graceMs = 20_000) {
      stopping ??= (async () => {
        if (child.exitCode === null && child.signalCode === null) {
          child.kill('SIGTERM')
          const timer = setTimeout(() => child.kill('SIGKILL'), graceMs)
          await exited
          clearTimeout(timer)
        }
        running.delete(handle)
        await new Promise<void>((resolve) => log.end(resolve))
      })()
      return stopping
    },
  }
  running.add(handle)
  try {
    handle.ready = await ready
    return handle
  } catch (err) {
    await handle.stop(2_000)
    throw err
  }
}

/** A JSON log line (pino) whose `msg` is `msg`; gives its fields. */
export function logLine(msg: string): (line: string) => Record<string, unknown> | undefined {
  return (line) => {
    if (!line.startsWith('{')) return undefined
    try {
      const parsed = JSON.parse(line) as Record<string, unknown>
      return parsed.msg === msg ? parsed : undefined
    } catch {
      return undefined
    }
  }
}

/** `node bin/tally.js <role>`: the role exactly as users run it. */
export function spawnRole(
  role: 'ingest' | 'stream' | 'query',
  env: Record<string, string>,
  logDir: string,
  name: string = role,
): Promise<Child> {
  const readyMsg = { ingest: 'ingest listening', stream: 'stream worker running', query: 'query listening' }[
    role
  ]
  return spawnNode({
    name,
    args: [join(projectRoot(), 'bin', 'tally.js'), role],
    // TALLY_LOG_FORMAT is passed on, so one tree measures format 1 against format 2 back to back.
    env: {
      LOG_LEVEL: 'info',
      PORT: '0',
      ...(process.env.TALLY_LOG_FORMAT ? { TALLY_LOG_FORMAT: process.env.TALLY_LOG_FORMAT } : {}),
      ...env,
    },
    logDir,
    isReady: logLine(readyMsg),
  })
}

/** The bare Fastify peer (bench/peers/bare-fastify.ts) in its own process. */
export function spawnBareFastify(logDir: string): Promise<Child> {
  return spawnNode({
    name: 'bare-fastify',
    args: [join(projectRoot(), 'dist', 'bench', 'peers', 'bare-fastify.js')],
    env: {},
    logDir,
    isReady: (line) =>
      line.startsWith('{"ready"') ? (JSON.parse(line) as Record<string, unknown>) : undefined,
  })
}

/** The `url` field of a ready line. */
export function urlOf(child: Child): string {
  const url = child.ready.url
  if (typeof url !== 'string')
    throw new Error(`${child.name}: its ready line has no url (log ${child.logFile})`)
  return url
}

export interface Finished {
  code: number | null
  /** Every stdout line. */
  lines: string[]
  /** Peak RSS of the process (bytes): its high-water mark, read at each line it printed. */
  peakRssBytes: number | undefined
  logFile: string
}

/**
 * Runs `node <args>` to its end (a job rather than a server), keeping its stdout lines and its
 * peak RSS. Killed after `timeoutMs`.
 */
export function runNode(
  options: Omit<SpawnOptions, 'isReady' | 'readyTimeoutMs'> & { timeoutMs: number },
): Promise<Finished> {
  return runJob({ ...options, command: process.execPath, args: nodeArgs(options.args) })
}

/** Runs `command <args>` (a peer that is not Node, such as a JVM) to its end, as runNode does. */
export async function runJob(
  options: Omit<SpawnOptions, 'isReady' | 'readyTimeoutMs'> & { command: string; timeoutMs: number },
): Promise<Finished> {
  const logFile = join(options.logDir, `${options.name}-${++counter}.log`)
  const log = createWriteStream(logFile)
  const child = spawn(options.command, options.args, {
    cwd: projectRoot(),
    env: { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '', ...options.env },
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  const pid = child.pid
  if (pid === undefined)
    throw new Error(`${options.name}: could not start ${options.command} ${options.args.join(' ')}`)
  child.stderr.pipe(log, { end: false })
  const lines: string[] = []
  let peak: number | undefined
  const sample = () => {
    const v = peakRssOfPid(pid)
    if (v !== undefined) peak = Math.max(peak ?? 0, v)
  }
  // VmHWM only grows, so a late reading is the peak so far; a timer covers jobs that print little.
  const sampler = setInterval(sample, 200)
  createInterface({ input: child.stdout }).on('line', (line) => {
    sample()
    lines.push(line)
    log.write(`${line}\n`)
  })
  const timer = setTimeout(() => child.kill('SIGKILL'), options.timeoutMs)
  const code = await new Promise<number | null>((resolve) => child.once('close', (c) => resolve(c)))
  clearTimeout(timer)
  clearInterval(sampler)
  await new Promise<void>((resolve) => log.end(resolve))
  return { code, lines, peakRssBytes: peak, logFile }
}

/** A job's result: its last stdout line, a JSON object; throws (exit code, log) when it has none. */
export function resultOf<T>(job: Finished, what: string): T {
  const last = job.lines.at(-1)
  if (job.code !== 0 || !last?.startsWith('{'))
    throw new Error(`${what} failed (exit ${job.code}, log ${job.logFile})`)
  return JSON.parse(last) as T
}
