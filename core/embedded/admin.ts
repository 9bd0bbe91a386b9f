import { chmodSync, existsSync, rmSync } from 'node:fs'
import { request } from 'node:http'
import { join } from 'node:path'
import { type Goal, goalOf } from '../aggregate/goals.js'
import { ERR } from '../error-codes.js'
import { TallyError } from '../errors.js'
import { createHttpServer } from '../http.js'
import type { Logger } from '../log.js'
import type { NewSite, ReadTokenInfo, Site, SiteStore } from '../ports/site-store.js'
import { EMBEDDED_DIR } from './index.js'

/**
 * The embedded backend belongs to one process, so `tally sites …` cannot open it while `tally all`
 * runs. Instead the running process answers site commands on a Unix socket in the data folder
 * (mode 0600: only the same user, no network port), and the CLI sends them there.
 */

export const ADMIN_SOCKET = 'admin.sock'

export function adminSocketPath(dataDir: string): string {
  return join(dataDir, EMBEDDED_DIR, ADMIN_SOCKET)
}

export interface RunningAdmin {
  path: string
  close(): Promise<void>
}

/** Longest socket path the OS takes (sockaddr_un holds 108 bytes on Linux, 104 on macOS). */
const MAX_SOCKET_PATH = 100

/**
 * Serves `sites` on the data folder's admin socket. Call only while holding the data folder.
 * Undefined (with a warning) when the folder's path is too long for a socket.
 */
export async function serveAdmin(
  dataDir: string,
  sites: SiteStore,
  logger: Logger,
): Promise<RunningAdmin | undefined> {
  const path = adminSocketPath(dataDir)
  if (Buffer.byteLength(path) > MAX_SOCKET_PATH) {
    logger.warn(
      { path },
      'data folder path too long for the admin socket: `tally sites` works only while Tally is stopped',
    )
    return undefined
  }
  // Whoever holds the folder owns the socket: one left here belongs to a process that is gone.
  rmSync(path, { force: true })
  const app = createHttpServer({ logger, bodyLimit: 64 * 1024, requestTimeoutMs: 10_000 })
  app.get('/sites', async () => sites.list())
  app.post<{ Body: NewSite }>('/sites', async (req) => sites.create(req.body))
  app.post<{ Params: { id: string } }>('/sites/:id/rotate-key', async (req) =>
    sites.rotateWriteKey(req.params.id),
  )
  app.post<{ Params: { id: string } }>('/sites/:id/tokens', async (req) => ({
    readToken: await sites.addReadToken(req.params.id),
  }))
  app.get<{ Params: { id: string } }>('/sites/:id/tokens', async (req) => sites.listReadTokens(req.params.id))
  app.post<{ Params: { id: string; tokenId: string } }>('/sites/:id/tokens/:tokenId/revoke', async (req) =>
    sites.revokeReadToken(req.params.id, req.params.tokenId),
  )
  app.post<{ Params: { id: string }; Body: { tokenHash: string; usedAtMs: number } }>(
    '/sites/:id/token-uses',
    async (req) => {
      await sites.markReadTokenUsed(req.params.id, req.body.tokenHash, new Date(req.body.usedAtMs))
      return { recorded: true }
    },
  )
  app.post<{ Params: { id: string }; Body: { timezone: string } }>('/sites/:id/timezone', async (req) =>
    sites.setTimezone(req.params.id, req.body.timezone),
  )
  // Custom properties (core/aggregate/props.ts).
  app.get<{ Params: { id: string } }>('/sites/:id/props', async (req) => sites.listPropKeys(req.params.id))
  app.post<{ Params: { id: string }; Body: { key: string } }>('/sites/:id/props', async (req) => {
    await sites.addPropKey(req.params.id, req.body.key)
    return { added: true }
  })
  app.post<{ Params: { id: string }; Body: { key: string } }>('/sites/:id/props/remove', async (req) => ({
    removed: await sites.removePropKey(req.params.id, req.body.key),
  }))
  // Goals (core/aggregate/goals.ts): checked again here, the socket takes any JSON.
  app.get<{ Params: { id: string } }>('/sites/:id/goals', async (req) => sites.listGoals(req.params.id))
  app.post<{ Params: { id: string }; Body: { kind: string; target: string } }>(
    '/sites/:id/goals',
    async (req) => {
      await sites.addGoal(req.params.id, goalOf(req.body.kind, req.body.target))
      return { added: true }
    },
  )
  app.post<{ Params: { id: string }; Body: { name: string } }>('/sites/:id/goals/remove', async (req) => ({
    removed: await sites.removeGoal(req.params.id, req.body.name),
  }))
  app.get<{ Params: { id: string } }>('/sites/:id/aliases', async (req) => sites.listAliases(req.params.id))
  app.post<{ Params: { id: string }; Body: { domain: string } }>('/sites/:id/aliases', async (req) => {
    await sites.addAlias(req.params.id, req.body.domain)
    return { added: true }
  })
  app.post<{ Params: { id: string }; Body: { domain: string } }>(
    '/sites/:id/aliases/remove',
    async (req) => ({
      removed: await sites.removeAlias(req.params.id, req.body.domain),
    }),
  )
  app.delete<{ Params: { id: string } }>('/sites/:id', async (req) => ({
    removed: await sites.remove(req.params.id),
  }))
  await app.listen({ path })
  chmodSync(path, 0o600)
  return {
    path,
    close: async () => {
      await app.close()
      rmSync(path, { force: true })
    },
  }
}

/** Whether a running process answers on the data folder's admin socket. */
export function hasAdminSocket(dataDir: string): boolean {
  return existsSync(adminSocketPath(dataDir))
}

function call<T>(path: string, method: string, url: string, body?: unknown): Promise<T> {
  return new Promise((resolve, reject) => {
    const payload = body === undefined ? undefined : JSON.stringify(body)
    const req = request(
      {
        socketPath: path,
        method,
        path: url,
        headers: payload
          ? { 'content-type': 'application/json', 'content-length': Buffer.byteLength(payload) }
          : {},
        timeout: 10_000,
      },
      (res) => {
        const chunks: Buffer[] = []
        res.on('data', (c: Buffer) => chunks.push(c))
        res.on('end', () => {
          const text = Buffer.concat(chunks).toString('utf8')
          let parsed: unknown
          try {
            parsed = JSON.parse(text)
          } catch {
            reject(
              new TallyError(
                ERR.ADMIN,
                `the running Tally answered ${res.statusCode}: ${text.slice(0, 200)}`,
              ),
            )
            return
          }
          if ((res.statusCode ?? 500) >= 400) {
            const e = parsed as { code?: string; message?: string; where?: string }
            reject(
              new TallyError(e.code ?? ERR.ADMIN, e.message ?? `status ${res.statusCode}`, {
                statusCode: res.statusCode ?? 500,
                ...(e.where ? { where: e.where } : {}),
              }),
            )
            return
          }
          resolve(parsed as T)
        })
      },
    )
    req.on('timeout', () => req.destroy(new Error('no answer within 10 s')))
    req.on('error', (err) =>
      reject(
        new TallyError(ERR.ADMIN, `cannot reach the running Tally on ${path}: ${err.message}`, {
          cause: err,
        }),
      ),
    )
    req.end(payload)
  })
}

function revive(site: Site): Site {
  return { ...site, createdAt: new Date(site.createdAt) }
}

/** A token from JSON: dates as strings, and absent fields where the store had undefined. */
function reviveToken(t: ReadTokenInfo): ReadTokenInfo {
  const date = (d: Date | undefined) => (d === undefined ? undefined : new Date(d))
  return {
    tokenId: t.tokenId,
    prefix: t.prefix,
    createdAt: new Date(t.createdAt),
    lastUsedAt: date(t.lastUsedAt),
    revokedAt: date(t.revokedAt),
  }
}

/** The sites of a running `tally all`, through its admin socket (SiteStore). */
export class AdminSiteStore implements SiteStore {
  constructor(private readonly path: string) {}

  async create(site: NewSite): Promise<{ site: Site; readToken: string }> {
    const out = await call<{ site: Site; readToken: string }>(this.path, 'POST', '/sites', site)
    return { site: revive(out.site), readToken: out.readToken }
  }

  async get(siteId: string): Promise<Site | undefined> {
    return (await this.list()).find((s) => s.siteId === siteId)
  }

  async list(): Promise<Site[]> {
    return (await call<Site[]>(this.path, 'GET', '/sites')).map(revive)
  }

  async byWriteKey(writeKey: string): Promise<Site | undefined> {
    return (await this.list()).find((s) => s.writeKey === writeKey)
  }

  async rotateWriteKey(siteId: string): Promise<Site> {
    return revive(await call<Site>(this.path, 'POST', `/sites/${encodeURIComponent(siteId)}/rotate-key`))
  }

  async addReadToken(siteId: string): Promise<string> {
    return (
      await call<{ readToken: string }>(this.path, 'POST', `/sites/${encodeURIComponent(siteId)}/tokens`)
    ).readToken
  }

  async listReadTokens(siteId: string): Promise<ReadTokenInfo[]> {
    return (await call<ReadTokenInfo[]>(this.path, 'GET', `/sites/${encodeURIComponent(siteId)}/tokens`)).map(
      reviveToken,
    )
  }

  async revokeReadToken(siteId: string, tokenId: string): Promise<ReadTokenInfo> {
    return reviveToken(
      await call<ReadTokenInfo>(
        this.path,
        'POST',
        `/sites/${encodeURIComponent(siteId)}/tokens/${encodeURIComponent(tokenId)}/revoke`,
      ),
    )
  }

  async markReadTokenUsed(siteId: string, tokenHash: string, usedAt: Date): Promise<void> {
    await call(this.path, 'POST', `/sites/${encodeURIComponent(siteId)}/token-uses`, {
      tokenHash,
      usedAtMs: usedAt.getTime(),
    })
  }

  async remove(siteId: string): Promise<boolean> {
    return (await call<{ removed: boolean }>(this.path, 'DELETE', `/sites/${encodeURIComponent(siteId)}`))
      .removed
  }

  async addAlias(siteId: string, domain: string): Promise<void> {
    await call(this.path, 'POST', `/sites/${encodeURIComponent(siteId)}/aliases`, { domain })
  }

  async removeAlias(siteId: string, domain: string): Promise<boolean> {
    return (
      await call<{ removed: boolean }>(
        this.path,
        'POST',
        `/sites/${encodeURIComponent(siteId)}/aliases/remove`,
        {
          domain,
        },
      )
    ).removed
  }

  async setTimezone(siteId: string, timezone: string): Promise<Site> {
    return revive(
      await call<Site>(this.path, 'POST', `/sites/${encodeURIComponent(siteId)}/timezone`, { timezone }),
    )
  }

  async listAliases(siteId: string): Promise<string[]> {
    return call<string[]>(this.path, 'GET', `/sites/${encodeURIComponent(siteId)}/aliases`)
  }

  // Custom properties (core/aggregate/props.ts).
  async addPropKey(siteId: string, key: string): Promise<void> {
    await call(this.path, 'POST', `/sites/${encodeURIComponent(siteId)}/props`, { key })
  }

  async removePropKey(siteId: string, key: string): Promise<boolean> {
    return (
      await call<{ removed: boolean }>(
        this.path,
        'POST',
        `/sites/${encodeURIComponent(siteId)}/props/remove`,
        {
          key,
        },
      )
    ).removed
  }

  async listPropKeys(siteId: string): Promise<string[]> {
    return call<string[]>(this.path, 'GET', `/sites/${encodeURIComponent(siteId)}/props`)
  }

  // Goals (core/aggregate/goals.ts).
  async addGoal(siteId: string, goal: Goal): Promise<void> {
    await call(this.path, 'POST', `/sites/${encodeURIComponent(siteId)}/goals`, {
      kind: goal.kind,
      target: goal.target,
    })
  }

  async removeGoal(siteId: string, name: string): Promise<boolean> {
    return (
      await call<{ removed: boolean }>(
        this.path,
        'POST',
        `/sites/${encodeURIComponent(siteId)}/goals/remove`,
        {
          name,
        },
      )
    ).removed
  }

  async listGoals(siteId: string): Promise<Goal[]> {
    return call<Goal[]>(this.path, 'GET', `/sites/${encodeURIComponent(siteId)}/goals`)
  }

  // Ingest runs inside the process that holds the embedded files: it never asks through the socket.
  async byDomain(): Promise<Site | undefined> {
    throw new TallyError(ERR.USAGE, 'looking sites up by domain is done by the running Tally itself')
  }

  async dailySalt(): Promise<Buffer> {
    throw new TallyError(ERR.USAGE, 'the daily salt is kept by the running Tally itself')
  }

  async saltDays(): Promise<string[]> {
    throw new TallyError(ERR.USAGE, 'the daily salt is kept by the running Tally itself')
  }

  async importSite(): Promise<'created' | 'unchanged' | 'conflict'> {
    throw new TallyError(ERR.USAGE, 'importing sites into a running Tally is not supported: stop it first')
  }
}
