// Tally's browser tracker, served by ingest at /t.js (see ingest/tracker/plugin.ts, README "Tracker").
// No dependencies. Sends Segment-shaped events in batches to <api>/v1/b as text/plain (no CORS
// preflight), by navigator.sendBeacon or else fetch(…, {keepalive: true}); events that could not
// be handed over stay queued (in storage too) and are retried with the same messageId, which the
// stream deduplicates. Only whole-line `//` comments: ingest strips them and indentation when serving.
;(() => {
  const w = window
  const d = document
  const n = navigator
  const loc = location
  const s = d.currentScript
  // Loaded twice (snippet pasted twice): the first copy keeps running.
  if (!s || w.tally?.v) return
  const V = '1'
  const attr = (k, dflt) => s.getAttribute(`data-${k}`) ?? dflt
  const key = attr('key', '')
  // Default API base: where this script came from, without /t.js, so a first-party proxy of
  // /stats/t.js sends to /stats/v1/b.
  const api = attr('api', s.src.replace(/\/t\.js(?:[?#].*)?$/, '')).replace(/\/+$/, '')
  const batchMs = Number(attr('batch-ms', '500'))
  const gpc = attr('honor-gpc', 'true') === 'true' && n.globalPrivacyControl === true
  const dnt = attr('honor-dnt', 'false') === 'true' && (n.doNotTrack === '1' || w.doNotTrack === '1')
  const off = !key || gpc || dnt
  if (!key) console.warn('tally: the script tag has no data-key; nothing is sent')
  const mode = attr('storage', 'local')
  let store = null
  try {
    store = off ? null : mode === 'local' ? w.localStorage : mode === 'session' ? w.sessionStorage : null
  } catch (_) {
    // Storage refused (privacy settings, sandboxed frame): run without it.
  }
  const get = (k) => {
    try {
      return store?.getItem(`tally_${k}`) ?? null
    } catch (_) {
      return null
    }
  }
  const put = (k, v) => {
    try {
      if (v === null) store?.removeItem(`tally_${k}`)
      else store?.setItem(`tally_${k}`, v)
    } catch (_) {
      // Quota exceeded: the in-memory copy still works for this page.
    }
  }
  const c = w.crypto
  const uuid = () =>
    c.randomUUID
      ? c.randomUUID()
      : '10000000-1000-4000-8000-100000000000'.replace(/[018]/g, (x) =>
          (x ^ (c.getRandomValues(new Uint8Array(1))[0] & (15 >> (x / 4)))).toString(16),
        )
  const aid = get('aid') || uuid()
  put('aid', aid)
  let uid = get('uid')
  // Events older than a day are not worth retrying.
  const fresh = (e) => Date.now() - Date.parse(e.timestamp) < 864e5
  let q = []
  try {
    q = JSON.parse(get('q') || '[]').filter(fresh)
  } catch (_) {
    q = []
  }
  let timer = 0
  let tries = 0
  // Events handed to a fetch that has not answered yet.
  const flying = new Set()
  const save = () => put('q', q.length ? JSON.stringify(q) : null)
  const schedule = (ms) => {
    if (!timer && q.length) timer = setTimeout(flush, ms)
  }
  const done = (batch) => {
    q = q.filter((e) => !batch.includes(e))
    tries = 0
    save()
  }
  const failed = () => schedule(Math.min(3e4, 1e3 * 2 ** tries++))
  function flush() {
    clearTimeout(timer)
    timer = 0
    for (;;) {
      const batch = q.filter((e) => !flying.has(e)).slice(0, 20)
      if (!batch.length) return
      const url = `${api}/v1/b`
      const body = JSON.stringify({ batch, writeKey: key, sentAt: new Date().toISOString() })
      let sent = false
      try {
        // A string body goes as text/plain: no preflight, and the browser sends it after unload.
        sent = !!n.sendBeacon?.(url, body)
      } catch (_) {
        sent = false
      }
      if (sent) {
        done(batch)
        continue
      }
      if (!w.fetch) return failed()
      for (const e of batch) flying.add(e)
      const land = (ok) => {
        for (const e of batch) flying.delete(e)
        if (ok) {
          done(batch)
          flush()
        } else failed()
      }
      fetch(url, {
        method: 'POST',
        body,
        keepalive: true,
        credentials: 'omit',
        headers: { 'content-type': 'text/plain' },
      }).then(
        // A 4xx other than 429 will not get better by retrying: the batch is dropped.
        (r) => land(r.ok || (r.status < 500 && r.status !== 429)),
        () => land(false),
      )
    }
  }
  const page = () => ({
    path: loc.pathname,
    referrer: d.referrer,
    search: loc.search,
    title: d.title,
    url: loc.href,
  })
  const campaign = () => {
    let out
    new URLSearchParams(loc.search).forEach((v, k) => {
      if (k.startsWith('utm_')) {
        out = out || {}
        out[k === 'utm_campaign' ? 'name' : k.slice(4)] = v
      }
    })
    return out
  }
  const ev = (type, fields) => {
    if (off) return
    const context = {
      page: page(),
      library: { name: 'tally.js', version: V },
      locale: n.language,
      // As analytics.js does: a beacon sent while the page unloads, or a proxy, may carry another
      // User-Agent header than the visitor's browser.
      userAgent: n.userAgent,
      screen: { width: screen.width, height: screen.height },
    }
    const utm = campaign()
    if (utm) context.campaign = utm
    const e = {
      type,
      messageId: uuid(),
      anonymousId: aid,
      timestamp: new Date().toISOString(),
      context,
      ...fields,
    }
    if (uid) e.userId = uid
    q.push(e)
    // A page that cannot send keeps its newest 100 events.
    if (q.length > 100) q.shift()
    save()
    schedule(batchMs)
  }
  let last = null
  const pageview = (props) => {
    last = loc.pathname + loc.search
    ev('page', { properties: { ...page(), ...props } })
  }
  // Single-page apps: a pushState/replaceState/popstate that changes path or query is a page view.
  const changed = () => {
    if (loc.pathname + loc.search !== last) pageview()
  }
  const cmds = {
    page: (props) => pageview(props),
    track: (name, props) => ev('track', { event: String(name), properties: { ...props } }),
    identify: (id, traits) => {
      uid = String(id)
      put('uid', uid)
      ev('identify', { userId: uid, traits: { ...traits } })
    },
  }
  const tally = (cmd, ...args) => cmds[cmd]?.(...args)
  tally.v = V
  tally.off = off
  const early = w.tally?.q || []
  w.tally = tally
  if (off) return
  if (attr('auto', 'true') === 'true') {
    for (const m of ['pushState', 'replaceState']) {
      const orig = history[m]
      history[m] = function (...args) {
        const r = orig.apply(this, args)
        changed()
        return r
      }
    }
    w.addEventListener('popstate', changed)
    // Restored from the back/forward cache: the visitor sees the page again.
    w.addEventListener('pageshow', (e) => e.persisted && pageview())
    pageview()
  }
  for (const a of early) tally(...a)
  const outbound = (e) => {
    const a = e.target.closest?.('a[href]')
    if (a && /^https?:$/.test(a.protocol) && a.host !== loc.host && (e.type === 'click' || e.button === 1)) {
      cmds.track('Outbound Link Clicked', { url: a.href })
      // The visitor is leaving: hand the event over now.
      flush()
    }
  }
  d.addEventListener('click', outbound, true)
  d.addEventListener('auxclick', outbound, true)
  // Before a navigation starts, in the live page: an event tracked in the same task as a
  // navigation is handed over before the page unloads (a busy browser may cut pagehide short).
  w.addEventListener('beforeunload', flush)
  w.addEventListener('pagehide', flush)
  d.addEventListener('visibilitychange', () => d.visibilityState === 'hidden' && flush())
  if (q.length) schedule(batchMs)
})()
