import type { Command } from 'commander'
import { eventGoal, type Goal, pageGoal } from '../../core/aggregate/goals.js'
import { checkPropKey } from '../../core/aggregate/props.js'
import { createCassandraClient, isUnknownKeyspace } from '../../core/cassandra/client.js'
import { notMigrated, unappliedMigrations } from '../../core/cassandra/migrate.js'
import { CassandraSiteStore } from '../../core/cassandra/sites.js'
import { backendOf } from '../../core/config.js'
import { AdminSiteStore, adminSocketPath, hasAdminSocket } from '../../core/embedded/admin.js'
import type { EmbeddedBackend } from '../../core/embedded/index.js'
import { ERR } from '../../core/error-codes.js'
import { TallyError, UsageError } from '../../core/errors.js'
import { hashToken, READ_TOKEN_ID, readTokenId } from '../../core/keys.js'
import type { ReadTokenInfo, Site, SiteStore } from '../../core/ports/site-store.js'
import { canonicalZone, UTC } from '../../query/zone.js'
import { openEmbeddedBackend } from '../backend.js'
import type { ConfigLoader } from './config-loader.js'
import { announceBackend } from './run-role.js'

const DOMAIN =
  /^(?=.{1,253}$)([a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*$/
const SITE_ID = /^[a-z0-9][a-z0-9._-]{0,99}$/

export function parseDomain(raw: string): string {
  const d = raw
    .trim()
    .toLowerCase()
    .replace(/^https?:\/\//, '')
    .replace(/\/.*$/, '')
  if (!DOMAIN.test(d)) throw new UsageError(`"${raw}" is not a domain name (e.g. example.com)`)
  return d
}

export function parseOrigin(raw: string): string {
  let url: URL
  try {
    url = new URL(raw)
  } catch {
    throw new UsageError(`--origin "${raw}" is not a URL (e.g. https://www.example.com)`)
  }
  if (url.protocol !== 'https:' && url.protocol !== 'http:')
    throw new UsageError(`--origin "${raw}" must be http or https`)
  return url.origin
}

async function withStore<T>(getConfig: ConfigLoader, fn: (store: SiteStore) => Promise<T>): Promise<T> {
  const config = getConfig()
  announceBackend(config, 'sites', 'on-terminal')
  if (backendOf(config) === 'embedded') {
    let embedded: EmbeddedBackend
    try {
      embedded = openEmbeddedBackend(config)
    } catch (err) {
      // `tally all` holds the data folder: it answers site commands on its admin socket.
      if (err instanceof TallyError && err.code === ERR.DATA_DIR_LOCKED && hasAdminSocket(config.dataDir))
        return fn(new AdminSiteStore(adminSocketPath(config.dataDir)))
      throw err
    }
    try {
      return await fn(embedded.sites)
    } finally {
      await embedded.close()
    }
  }
  const client = createCassandraClient(config.cassandra, { keyspace: config.cassandra.keyspace })
  try {
    await client.connect()
    // A keyspace `tally migrate` never ran on is refused before a site is written into it.
    await unappliedMigrations(client, config.cassandra.keyspace)
  } catch (err) {
    await client.shutdown().catch(() => undefined)
    if (err instanceof TallyError) throw err
    if (isUnknownKeyspace(err)) throw notMigrated(config.cassandra.keyspace, 'does not exist')
    throw new TallyError(
      ERR.SERVICE_UNAVAILABLE,
      `cannot reach Cassandra at ${config.cassandra.contactPoints.join(',')} (keyspace ${config.cassandra.keyspace}; run \`tally migrate\` first): ${(err as Error).message}`,
      { cause: err },
    )
  }
  try {
    return await fn(new CassandraSiteStore(client))
  } finally {
    await client.shutdown()
  }
}

/** A token for `sites tokens --json`: every field present, null where the store knows nothing. */
function tokenJson(t: ReadTokenInfo) {
  return {
    tokenId: t.tokenId,
    prefix: t.prefix ?? null,
    createdAt: t.createdAt.toISOString(),
    lastUsedAt: t.lastUsedAt?.toISOString() ?? null,
    revokedAt: t.revokedAt?.toISOString() ?? null,
  }
}

function tokenLine(t: ReadTokenInfo): string {
  const state = t.revokedAt ? `revoked ${t.revokedAt.toISOString()}` : 'active'
  return `${t.tokenId}\t${t.prefix ? `${t.prefix}…` : '(no prefix)'}\tcreated ${t.createdAt.toISOString()}\tlast used ${t.lastUsedAt?.toISOString() ?? 'never'}\t${state}`
}

/** A site for `sites show --json` (never a token: only how many). */
function siteJson(site: Site, aliases: readonly string[]) {
  return {
    siteId: site.siteId,
    domain: site.domain,
    writeKey: site.writeKey,
    origins: site.origins,
    aliases,
    readTokens: site.readTokenHashes.length,
    createdAt: site.createdAt.toISOString(),
    timezone: site.timezone ?? UTC,
  }
}

function siteText(site: Site, aliases: readonly string[]): string {
  return [
    `site ${site.siteId}`,
    `  domain     ${site.domain}`,
    `  write key  ${site.writeKey}`,
    `  origins    ${site.origins.join(' ') || '-'}`,
    `  aliases    ${aliases.join(' ') || '-'}`,
    `  read tokens ${site.readTokenHashes.length}`,
    `  created    ${site.createdAt.toISOString()}`,
    `  time zone  ${site.timezone ?? UTC}`,
  ].join('\n')
}

function print(json: boolean, value: unknown, text: string): void {
  process.stdout.write(json ? `${JSON.stringify(value)}\n` : `${text}\n`)
}

export function registerSitesCommands(program: Command, getConfig: ConfigLoader): void {
  const sites = program.command('sites').description('manage sites, their write keys and read tokens')

  sites
    .command('add')
    .description('create a site; prints its id, write key (public) and a read token (secret, shown once)')
    .argument('<domain>', 'the site domain, e.g. example.com')
    .option(
      '--origin <url...>',
      'browser origins allowed to send events (the domain itself is always allowed)',
    )
    .option('--id <siteId>', 'site id (default: the domain)')
    .option(
      '--alias <domain...>',
      "other domains Plausible's tracker may name for this site (see `tally sites alias`)",
    )
    .option(
      '--timezone <zone>',
      'IANA time zone its days, periods and daily timeseries follow, e.g. Europe/Berlin (default UTC)',
    )
    .option('--json', 'print {"siteId","writeKey","readToken"}', false)
    .action(
      async (
        domainArg: string,
        opts: { origin?: string[]; id?: string; alias?: string[]; timezone?: string; json: boolean },
      ) => {
        const domain = parseDomain(domainArg)
        const siteId = opts.id ?? domain
        if (!SITE_ID.test(siteId))
          throw new UsageError(`--id "${siteId}" must be lower-case letters, digits, ".", "_" or "-"`)
        const origins = (opts.origin ?? []).map(parseOrigin)
        const aliases = (opts.alias ?? []).map(parseDomain)
        const timezone = opts.timezone === undefined ? undefined : canonicalZone(opts.timezone, '--timezone')
        const { site, readToken } = await withStore(getConfig, async (s) => {
          const created = await s.create({ siteId, domain, origins, ...(timezone ? { timezone } : {}) })
          for (const alias of aliases) await s.addAlias(siteId, alias)
          return created
        })
        print(
          opts.json,
          { siteId: site.siteId, writeKey: site.writeKey, readToken },
          `site ${site.siteId}\n  write key  ${site.writeKey}\n  read token ${readToken}  (secret: shown only now)\n  origins    ${[`https://${domain}`, ...origins].join(' ')}\n  time zone  ${site.timezone ?? UTC}${aliases.length > 0 ? `\n  aliases    ${aliases.join(' ')}` : ''}`,
        )
      },
    )

  sites
    .command('alias')
    .description(
      "list, add or remove the other domains under which a site takes Plausible's events (POST /api/event names its site by domain)",
    )
    .argument('<siteId>', 'the site')
    .argument('<action>', 'list, add or remove')
    .argument('[domain]', 'the domain to add or remove, e.g. staging.example.com')
    .option('--json', 'print JSON (list: an array of domains)', false)
    .action(
      async (siteId: string, action: string, domainArg: string | undefined, opts: { json: boolean }) => {
        if (action === 'list') {
          const aliases = await withStore(getConfig, (s) => s.listAliases(siteId))
          print(opts.json, aliases, aliases.length === 0 ? `site ${siteId} has no alias` : aliases.join('\n'))
          return
        }
        if (action !== 'add' && action !== 'remove')
          throw new UsageError(`sites alias: the action is list, add or remove, not "${action}"`)
        if (domainArg === undefined) throw new UsageError(`sites alias ${siteId} ${action}: name the domain`)
        const domain = parseDomain(domainArg)
        if (action === 'add') {
          await withStore(getConfig, (s) => s.addAlias(siteId, domain))
          print(opts.json, { siteId, alias: domain, added: true }, `site ${siteId}: alias ${domain} added`)
          return
        }
        const removed = await withStore(getConfig, (s) => s.removeAlias(siteId, domain))
        if (!removed) throw new UsageError(`site ${siteId} has no alias ${domain}`)
        print(opts.json, { siteId, alias: domain, removed: true }, `site ${siteId}: alias ${domain} removed`)
      },
    )

  // Custom properties (core/aggregate/props.ts).
  sites
    .command('props')
    .description(
      'list, add or remove the event property keys a site is broken down by (dimensions prop:KEY, at most 20); a key added applies to the stream from then on: rebuild the days you want it for',
    )
    .argument('<siteId>', 'the site')
    .argument('<action>', 'list, add or remove')
    .argument('[key]', 'the property key, e.g. plan (letters, digits, _ - . ; at most 64)')
    .option('--json', 'print JSON (list: an array of keys)', false)
    .action(async (siteId: string, action: string, keyArg: string | undefined, opts: { json: boolean }) => {
      if (action === 'list') {
        const keys = await withStore(getConfig, (s) => s.listPropKeys(siteId))
        print(
          opts.json,
          keys,
          keys.length === 0 ? `site ${siteId} declares no property key` : keys.join('\n'),
        )
        return
      }
      if (action !== 'add' && action !== 'remove')
        throw new UsageError(`sites props: the action is list, add or remove, not "${action}"`)
      if (keyArg === undefined) throw new UsageError(`sites props ${siteId} ${action}: name the key`)
      const key = checkPropKey(keyArg)
      if (action === 'add') {
        await withStore(getConfig, (s) => s.addPropKey(siteId, key))
        print(
          opts.json,
          { siteId, key, added: true },
          `site ${siteId}: property ${key} added (dimension prop:${key}; counted from now on, rebuild earlier days to count them)`,
        )
        return
      }
      const removed = await withStore(getConfig, (s) => s.removePropKey(siteId, key))
      if (!removed) throw new UsageError(`site ${siteId} declares no property ${key}`)
      print(opts.json, { siteId, key, removed: true }, `site ${siteId}: property ${key} removed`)
    })

  // Goals (core/aggregate/goals.ts).
  sites
    .command('goals')
    .description(
      'list, add or remove the goals of a site (at most 20): an event name (--event Signup) or a page path pattern (--page /checkout/*, * = any characters within a segment, ** = any across segments), named Signup or "Visit /checkout/*"; completions are counted as the dimension goal from then on: rebuild the days you want them for',
    )
    .argument('<siteId>', 'the site')
    .argument('<action>', 'list, add or remove')
    .argument('[name]', "remove: the goal's name as list prints it (or give --event / --page)")
    .option('--event <name>', 'a goal completed by a track event of this name')
    .option(
      '--page <pattern>',
      'a goal completed by a pageview whose path matches (e.g. /checkout/*, /blog/**)',
    )
    .option('--json', 'print JSON (list: an array of {name, kind, target})', false)
    .action(
      async (
        siteId: string,
        action: string,
        nameArg: string | undefined,
        opts: { event?: string; page?: string; json: boolean },
      ) => {
        if (action === 'list') {
          const goals = await withStore(getConfig, (s) => s.listGoals(siteId))
          print(
            opts.json,
            goals,
            goals.length === 0 ? `site ${siteId} defines no goal` : goals.map((g) => g.name).join('\n'),
          )
          return
        }
        if (action !== 'add' && action !== 'remove')
          throw new UsageError(`sites goals: the action is list, add or remove, not "${action}"`)
        const given = [opts.event, opts.page, action === 'remove' ? nameArg : undefined].filter(
          (x) => x !== undefined,
        )
        if (given.length !== 1)
          throw new UsageError(
            action === 'add'
              ? `sites goals ${siteId} add: give one of --event NAME or --page PATTERN`
              : `sites goals ${siteId} remove: give the goal's name, --event NAME or --page PATTERN`,
          )
        if (action === 'add') {
          const goal: Goal = opts.event !== undefined ? eventGoal(opts.event) : pageGoal(opts.page!)
          await withStore(getConfig, (s) => s.addGoal(siteId, goal))
          print(
            opts.json,
            { siteId, ...goal, added: true },
            `site ${siteId}: goal ${goal.name} added (dimension goal; counted from now on, rebuild earlier days to count them)`,
          )
          return
        }
        const name =
          opts.event !== undefined
            ? eventGoal(opts.event).name
            : opts.page !== undefined
              ? pageGoal(opts.page).name
              : nameArg!
        const removed = await withStore(getConfig, (s) => s.removeGoal(siteId, name))
        if (!removed) throw new UsageError(`site ${siteId} defines no goal ${name}`)
        print(opts.json, { siteId, name, removed: true }, `site ${siteId}: goal ${name} removed`)
      },
    )

  sites
    .command('list')
    .description('list sites with their write keys and origins')
    .option('--json', 'print JSON', false)
    .action(async (opts: { json: boolean }) => {
      const list = await withStore(getConfig, (s) => s.list())
      const rows = list.map((s) => ({
        siteId: s.siteId,
        domain: s.domain,
        writeKey: s.writeKey,
        origins: s.origins,
        readTokens: s.readTokenHashes.length,
        createdAt: s.createdAt.toISOString(),
        timezone: s.timezone ?? UTC,
      }))
      print(
        opts.json,
        rows,
        rows.length === 0
          ? 'no sites'
          : rows
              .map(
                (r) =>
                  `${r.siteId}\t${r.writeKey}\t${r.origins.join(',') || '-'}\t${r.readTokens} read token(s)\t${r.timezone}`,
              )
              .join('\n'),
      )
    })

  // Site settings: show and set (the time zone).
  sites
    .command('show')
    .description('show one site: domain, write key, origins, aliases, read tokens, time zone')
    .argument('<siteId>')
    .option('--json', 'print JSON', false)
    .action(async (siteId: string, opts: { json: boolean }) => {
      const [site, aliases] = await withStore(getConfig, async (s) => {
        const found = await s.get(siteId)
        if (!found) throw new TallyError(ERR.SITE_NOT_FOUND, `no site ${siteId}`, { where: 'siteId' })
        return [found, await s.listAliases(siteId)] as const
      })
      print(opts.json, siteJson(site, aliases), siteText(site, aliases))
    })

  sites
    .command('set')
    .description(
      "change a site's settings; --timezone: the IANA zone its days, periods and daily timeseries follow (UTC clears it)",
    )
    .argument('<siteId>')
    .option('--timezone <zone>', 'IANA time zone, e.g. Europe/Berlin, America/New_York, Asia/Kolkata, UTC')
    .option('--json', 'print the site as `sites show --json` does', false)
    .action(async (siteId: string, opts: { timezone?: string; json: boolean }) => {
      if (opts.timezone === undefined)
        throw new UsageError('sites set: give a setting to change (--timezone)')
      const timezone = canonicalZone(opts.timezone, '--timezone')
      const [site, aliases] = await withStore(getConfig, async (s) => {
        const changed = await s.setTimezone(siteId, timezone)
        return [changed, await s.listAliases(siteId)] as const
      })
      print(opts.json, siteJson(site, aliases), `site ${siteId}: time zone ${site.timezone ?? UTC}`)
    })

  sites
    .command('rotate-key')
    .description(
      'replace the write key of a site; the old key stops working once ingest caches expire (TALLY_SITE_CACHE_TTL_MS)',
    )
    .argument('<siteId>')
    .option('--json', 'print JSON', false)
    .action(async (siteId: string, opts: { json: boolean }) => {
      const site = await withStore(getConfig, (s) => s.rotateWriteKey(siteId))
      print(
        opts.json,
        { siteId: site.siteId, writeKey: site.writeKey },
        `site ${site.siteId}: new write key ${site.writeKey}`,
      )
    })

  sites
    .command('token')
    .description('create another read token for a site (shown once)')
    .argument('<siteId>')
    .option('--json', 'print JSON', false)
    .action(async (siteId: string, opts: { json: boolean }) => {
      const token = await withStore(getConfig, (s) => s.addReadToken(siteId))
      const tokenId = readTokenId(hashToken(token))
      print(
        opts.json,
        { siteId, readToken: token, tokenId },
        `site ${siteId}: read token ${token}  (secret: shown only now; id ${tokenId})`,
      )
    })

  sites
    .command('tokens')
    .description(
      'list the read tokens of a site: id, first characters, created, last used (recorded at most once a minute per query role), revoked',
    )
    .argument('<siteId>')
    .option('--json', 'print [{"tokenId","prefix","createdAt","lastUsedAt","revokedAt"}]', false)
    .action(async (siteId: string, opts: { json: boolean }) => {
      const tokens = await withStore(getConfig, (s) => s.listReadTokens(siteId))
      print(
        opts.json,
        tokens.map(tokenJson),
        tokens.length === 0 ? `site ${siteId}: no read tokens` : tokens.map(tokenLine).join('\n'),
      )
    })

  sites
    .command('revoke-token')
    .description(
      'revoke a read token by its id (see `sites tokens`); query roles refuse it once their site cache expires (TALLY_SITE_CACHE_TTL_MS)',
    )
    .argument('<siteId>')
    .argument('<tokenId>', 'the 12 hex digits `sites tokens` lists')
    .option('--json', 'print the revoked token as `sites tokens --json` does', false)
    .action(async (siteId: string, tokenId: string, opts: { json: boolean }) => {
      if (!READ_TOKEN_ID.test(tokenId))
        throw new UsageError(
          `"${tokenId}" is not a read token id (12 hex digits, see \`tally sites tokens ${siteId}\`)`,
        )
      const token = await withStore(getConfig, (s) => s.revokeReadToken(siteId, tokenId))
      print(
        opts.json,
        tokenJson(token),
        `site ${siteId}: read token ${token.tokenId} revoked at ${token.revokedAt?.toISOString() ?? '?'}`,
      )
    })

  sites
    .command('remove')
    .description('delete a site and its keys (its aggregates expire with their TTL)')
    .argument('<siteId>')
    .action(async (siteId: string) => {
      const removed = await withStore(getConfig, (s) => s.remove(siteId))
      if (!removed) throw new TallyError(ERR.SITE_NOT_FOUND, `no site ${siteId}`)
      process.stdout.write(`site ${siteId} removed\n`)
    })
}
