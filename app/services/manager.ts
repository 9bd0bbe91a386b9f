import { spawn } from 'node:child_process'
import { closeSync, existsSync, openSync, readFileSync } from 'node:fs'
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises'
import { connect } from 'node:net'
import { join } from 'node:path'
import type { ServicesConfig } from '../../core/config.js'
import { ERR } from '../../core/error-codes.js'
import { errorMessage, TallyError } from '../../core/errors.js'
import { sleep } from '../../core/retry.js'
import { ensureArtifact } from './fetch.js'
import { cassandraServer, kafkaServer, type ServerSpec } from './servers.js'

export type ServiceName = 'kafka' | 'cassandra'
export const SERVICE_NAMES: readonly ServiceName[] = ['kafka', 'cassandra']

export interface ServiceStatus {
  name: ServiceName
  /** up: ours and answering; starting: ours, not answering yet; down: not running. */
  state: 'up' | 'starting' | 'down'
  pid: number | undefined
  version: string | undefined
  address: string
  log: string
}

function alive(pid: number): boolean {
  // A child that exited but was not reaped yet still answers signal 0; /proc tells the truth.
  const stat = `/proc/${pid}/stat`
  if (existsSync(stat)) {
    try {
      const state = readFileSync(stat, 'utf8').split(') ')[1]?.[0]
      if (state === 'Z' || state === 'X') return false
    } catch {
      return false
    }
  }
  try {
    process.kill(pid, 0)
    return true
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM'
  }
}

function portInUse(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect({ host: '127.0.0.1', port })
    socket.setTimeout(1000)
    socket.once('connect', () => {
      socket.destroy()
      resolve(true)
    })
    socket.once('timeout', () => {
      socket.destroy()
      resolve(true)
    })
    socket.once('error', () => resolve(false))
  })
}

/**
 * Runs the local Kafka and Cassandra servers for development and tests: fetches them once, starts
 * them detached with PID files, and stops exactly the processes it started.
 */
export class ServicesManager {
  private readonly specs: Record<ServiceName, ServerSpec>

  constructor(
    private readonly cfg: ServicesConfig,
    private readonly say: (line: string) => void = () => undefined,
  ) {
    this.specs = { kafka: kafkaServer(cfg), cassandra: cassandraServer(cfg) }
  }

  private dir(name: ServiceName): string {
    return join(this.cfg.runDir, name)
  }
  pidFile(name: ServiceName): string {
    return join(this.dir(name), 'server.pid')
  }
  logFile(name: ServiceName): string {
    return join(this.dir(name), 'server.log')
  }
  private address(name: ServiceName): string {
    return `127.0.0.1:${this.specs[name].ports[0]}`
  }

  /** The PID from the PID file when that process is alive and is the server this manager started. */
  private ownPid(name: ServiceName): number | undefined {
    const file = this.pidFile(name)
    if (!existsSync(file)) return undefined
    const pid = Number(readFileSync(file, 'utf8').trim())
    if (!Number.isInteger(pid) || pid <= 0 || !alive(pid)) return undefined
    const cmdlinePath = `/proc/${pid}/cmdline`
    if (existsSync(cmdlinePath)) {
      const cmdline = readFileSync(cmdlinePath, 'utf8')
      if (!cmdline.includes(this.specs[name].mainClass) || !cmdline.includes(this.dir(name))) return undefined
    }
    return pid
  }

  async status(): Promise<ServiceStatus[]> {
    return Promise.all(SERVICE_NAMES.map((name) => this.statusOf(name)))
  }

  private async statusOf(name: ServiceName): Promise<ServiceStatus> {
    const pid = this.ownPid(name)
    const base = { name, pid, address: this.address(name), log: this.logFile(name) }
    if (pid === undefined) return { ...base, state: 'down', version: undefined }
    try {
      const version = await this.specs[name].probe(2000)
      return { ...base, state: 'up', version }
    } catch {
      return { ...base, state: 'starting', version: undefined }
    }
  }

  /** Starts the named servers (both by default) in parallel and waits until each answers. */
  async up(names: readonly ServiceName[] = SERVICE_NAMES): Promise<ServiceStatus[]> {
    return Promise.all(names.map((name) => this.upOne(name)))
  }

  private async upOne(name: ServiceName): Promise<ServiceStatus> {
    const spec = this.specs[name]
    const dir = this.dir(name)
    await mkdir(dir, { recursive: true })
    let pid = this.ownPid(name)
    if (pid !== undefined) {
      this.say(`${name}: already running (pid ${pid}), waiting until it answers`)
    } else {
      if (existsSync(this.pidFile(name))) {
        this.say(`${name}: removing stale PID file ${this.pidFile(name)}`)
        await rm(this.pidFile(name), { force: true })
      }
      for (const port of spec.ports) {
        if (await portInUse(port)) {
          throw new TallyError(
            ERR.PORT_IN_USE,
            `${name}: 127.0.0.1:${port} is already in use by a process tally services did not start; stop it, or use it by setting ${name === 'kafka' ? 'KAFKA_BROKERS' : 'CASSANDRA_CONTACT_POINTS'}`,
            { where: `127.0.0.1:${port}` },
          )
        }
      }
      const lib = await ensureArtifact(this.cfg.cacheDir, spec.artifact, this.say)
      await this.checkJava()
      const args = await spec.prepare(lib, this.cfg.java, (a) => this.runJava(a))
      pid = this.spawnServer(name, args)
      await writeFile(this.pidFile(name), `${pid}\n`)
      this.say(`${name}: started pid ${pid}, log ${this.logFile(name)}`)
    }
    const version = await this.waitReady(name, pid)
    this.say(`${name}: up ${version} at ${this.address(name)}`)
    return { name, state: 'up', pid, version, address: this.address(name), log: this.logFile(name) }
  }

  private async checkJava(): Promise<void> {
    const res = await this.runJava(['-version'])
    const m = /version "(\d+)(?:\.(\d+))?/.exec(res.output)
    const major = m ? (m[1] === '1' ? Number(m[2]) : Number(m[1])) : Number.NaN
    if (res.code !== 0 || !(major === 11 || major === 17)) {
      throw new TallyError(
        ERR.JAVA,
        `${this.cfg.java} reports ${m ? `Java ${major}` : 'no version'}; Cassandra 5.0 needs JDK 11 or 17: set TALLY_JAVA to such a java`,
      )
    }
  }

  private runJava(args: readonly string[]): Promise<{ code: number; output: string }> {
    return new Promise((resolve, reject) => {
      const child = spawn(this.cfg.java, args, { stdio: ['ignore', 'pipe', 'pipe'] })
      let output = ''
      child.stdout.on('data', (d: Buffer) => {
        output += d.toString()
      })
      child.stderr.on('data', (d: Buffer) => {
        output += d.toString()
      })
      child.on('error', (err) =>
        reject(new TallyError(ERR.JAVA, `cannot run ${this.cfg.java}: ${err.message}`, { cause: err })),
      )
      child.on('close', (code) => resolve({ code: code ?? 1, output }))
    })
  }

  private spawnServer(name: ServiceName, args: readonly string[]): number {
    const fd = openSync(this.logFile(name), 'a')
    try {
      const child = spawn(this.cfg.java, args, {
        detached: true,
        stdio: ['ignore', fd, fd],
        cwd: this.dir(name),
      })
      if (child.pid === undefined) throw new TallyError(ERR.SERVICES_START, `${name}: java did not start`)
      child.unref()
      return child.pid
    } finally {
      closeSync(fd)
    }
  }

  private async waitReady(name: ServiceName, pid: number): Promise<string> {
    const deadline = Date.now() + this.cfg.startTimeoutMs
    let last: unknown
    while (Date.now() < deadline) {
      if (!alive(pid)) {
        await rm(this.pidFile(name), { force: true })
        throw new TallyError(
          ERR.SERVICES_START,
          `${name} exited while starting; last log lines:\n${await this.tail(name)}`,
        )
      }
      try {
        return await this.specs[name].probe(2000)
      } catch (err) {
        last = err
        await sleep(1000)
      }
    }
    throw new TallyError(
      ERR.SERVICES_START,
      `${name} did not answer within ${this.cfg.startTimeoutMs} ms (${errorMessage(last)}); log: ${this.logFile(name)}\n${await this.tail(name)}`,
    )
  }

  private async tail(name: ServiceName, lines = 30): Promise<string> {
    try {
      return (await readFile(this.logFile(name), 'utf8')).split('\n').slice(-lines).join('\n')
    } catch {
      return '(no log)'
    }
  }

  /** Stops the servers this manager started, by PID: SIGTERM, then SIGKILL after `graceMs`. */
  async down(
    names: readonly ServiceName[] = SERVICE_NAMES,
    options: { purge?: boolean; graceMs?: number } = {},
  ): Promise<void> {
    await Promise.all(names.map((name) => this.downOne(name, options.graceMs ?? 30_000)))
    if (options.purge) {
      for (const name of names) {
        await rm(this.dir(name), { recursive: true, force: true })
        this.say(`${name}: data removed`)
      }
    }
  }

  private async downOne(name: ServiceName, graceMs: number): Promise<void> {
    const pid = this.ownPid(name)
    if (pid === undefined) {
      if (existsSync(this.pidFile(name))) await rm(this.pidFile(name), { force: true })
      this.say(`${name}: not running`)
      return
    }
    process.kill(pid, 'SIGTERM')
    const deadline = Date.now() + graceMs
    while (alive(pid) && Date.now() < deadline) await sleep(200)
    if (alive(pid)) {
      this.say(`${name}: did not stop within ${graceMs} ms, sending SIGKILL`)
      process.kill(pid, 'SIGKILL')
      while (alive(pid)) await sleep(100)
    }
    await rm(this.pidFile(name), { force: true })
    this.say(`${name}: stopped (pid ${pid})`)
  }
}
