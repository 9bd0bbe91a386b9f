// Tally dashboard: plain JavaScript, no build step. Reads the query API of the server it is served
// from, with a read token the user pastes; tokens stay in sessionStorage (or localStorage when
// remembered) and go out only in the Authorization header, never in the URL.
;(() => {
  const $ = (id) => document.getElementById(id)
  const STORE_KEY = 'tally.dashboard.sites'
  const REALTIME_MINUTES = 5
  const REALTIME_EVERY_MS = 5000
  const REFRESH_EVERY_MS = 60_000
  const fmt = new Intl.NumberFormat()

  // --- sites and tokens ----------------------------------------------------------------------
  const read = (storage) => {
    try {
      const list = JSON.parse(storage.getItem(STORE_KEY) || '[]')
      return Array.isArray(list) ? list.filter((s) => s && typeof s.site === 'string') : []
    } catch (_) {
      return []
    }
  }
  const sites = () => {
    const out = new Map()
    for (const s of read(localStorage)) out.set(s.site, { ...s, remembered: true })
    for (const s of read(sessionStorage)) out.set(s.site, { ...s, remembered: false })
    return [...out.values()]
  }
  const saveSite = (site, token, remember) => {
    removeSite(site)
    const storage = remember ? localStorage : sessionStorage
    storage.setItem(STORE_KEY, JSON.stringify([...read(storage), { site, token }]))
  }
  const removeSite = (site) => {
    for (const storage of [localStorage, sessionStorage]) {
      const rest = read(storage).filter((s) => s.site !== site)
      if (rest.length > 0) storage.setItem(STORE_KEY, JSON.stringify(rest))
      else storage.removeItem(STORE_KEY)
    }
  }

  // --- state in the URL fragment (site and range only) ----------------------------------------
  const state = () => {
    const h = new URLSearchParams(location.hash.slice(1))
    return { site: h.get('site') || '', range: h.get('range') || '24h', compare: h.get('compare') || '' }
  }
  const setState = (next) => {
    const s = { ...state(), ...next }
    history.replaceState(null, '', `#${new URLSearchParams(s)}`)
  }

  // --- API ------------------------------------------------------------------------------------
  class ApiError extends Error {
    constructor(status, body) {
      super(body?.message || `HTTP ${status}`)
      this.status = status
      this.code = body?.code
    }
  }
  const api = async (endpoint, params, signal) => {
    const entry = sites().find((s) => s.site === params.site)
    if (!entry) throw new ApiError(401, { message: `no read token for ${params.site}` })
    const res = await fetch(`/v1/stats/${endpoint}?${new URLSearchParams(params)}`, {
      headers: { authorization: `Bearer ${entry.token}` },
      cache: 'no-store',
      signal,
    })
    const body = await res.json().catch(() => undefined)
    if (!res.ok) throw new ApiError(res.status, body)
    return body
  }

  // --- rendering ------------------------------------------------------------------------------
  const status = (text, isError) => {
    const el = $('status')
    el.textContent = text
    el.className = isError ? 'error' : ''
  }
  const utc = (iso) => `${iso.slice(0, 16).replace('T', ' ')} UTC`
  /** Whole seconds as "1m 05s" (or "42s"). */
  const duration = (s) => (s >= 60 ? `${Math.floor(s / 60)}m ${String(s % 60).padStart(2, '0')}s` : `${s}s`)

  const fillTable = (id, rows, property, metrics) => {
    const body = $(id).tBodies[0]
    body.replaceChildren()
    const visible = rows.filter((r) => (r[metrics[0]] ?? 0) > 0)
    if (visible.length === 0) {
      const td = document.createElement('td')
      td.colSpan = metrics.length + 1
      td.className = 'empty'
      td.textContent = 'No data'
      body.append(document.createElement('tr'))
      body.lastChild.append(td)
      return
    }
    const top = Math.max(...visible.map((r) => r[metrics[0]] ?? 0), 1)
    for (const r of visible) {
      const tr = document.createElement('tr')
      const name = document.createElement('td')
      name.textContent = r[property]
      name.style.setProperty('--share', `${Math.round(((r[metrics[0]] ?? 0) / top) * 100)}%`)
      tr.append(name)
      for (const m of metrics) {
        const td = document.createElement('td')
        td.textContent = fmt.format(r[m] ?? 0)
        tr.append(td)
      }
      body.append(tr)
    }
  }

  let chart
  let chartData = [[], [], []]
  let chartStatus = []
  const css = (name) => getComputedStyle(document.documentElement).getPropertyValue(name).trim()
  const chartSize = () => {
    const width = $('chart').clientWidth || 300
    return { width, height: Math.max(200, Math.min(320, Math.round(width * 0.45))) }
  }
  /** Seconds between window starts (the interval of the series). */
  const windowStep = () => {
    const xs = chartData[0]
    return xs.length > 1 ? xs[1] - xs[0] : 3600
  }
  // Shades the windows that are not final: closed (stream, may still be revised) and open (counting).
  const shadeProvisional = (u) => {
    const { ctx } = u
    const xs = chartData[0]
    if (xs.length === 0) return
    const step = windowStep()
    ctx.save()
    // A point is plotted at its window's start; the window's band runs to the next start.
    ctx.beginPath()
    ctx.rect(u.bbox.left, u.bbox.top, u.bbox.width, u.bbox.height)
    ctx.clip()
    for (let i = 0; i < xs.length; i++) {
      const st = chartStatus[i]
      if (st === 'final') continue
      const x0 = u.valToPos(xs[i], 'x', true)
      const x1 = u.valToPos(xs[i] + step, 'x', true)
      ctx.fillStyle = st === 'open' ? css('--open') : css('--closed')
      ctx.fillRect(x0, u.bbox.top, x1 - x0, u.bbox.height)
    }
    ctx.restore()
  }
  const drawChart = (points) => {
    chartData = [
      points.map((p) => Date.parse(p.date) / 1000),
      points.map((p) => p.pageviews ?? 0),
      points.map((p) => p.visitors ?? 0),
    ]
    chartStatus = points.map((p) => p.status)
    const el = $('chart')
    el.dataset.points = String(points.length)
    el.dataset.provisional = String(points.filter((p) => p.status !== 'final').length)
    if (!window.uPlot) {
      el.textContent = 'Chart library not loaded.'
      return
    }
    if (chart) {
      chart.setData(chartData)
      return
    }
    chart = new window.uPlot(
      {
        ...chartSize(),
        tzDate: (ts) => window.uPlot.tzDate(new Date(ts * 1000), 'Etc/UTC'),
        // The x axis runs to the end of the last window, so the current (open) one shows.
        scales: {
          x: { time: true, range: (_u, min, max) => [min, max + windowStep()] },
          y: { range: (_u, _min, max) => [0, Math.max(1, max * 1.15)] },
        },
        axes: [{}, { size: 48 }],
        series: [
          {},
          {
            label: 'Pageviews',
            stroke: css('--accent'),
            fill: 'rgba(45,108,223,0.12)',
            width: 2,
            points: { show: false },
          },
          { label: 'Visitors', stroke: css('--accent2'), width: 2, points: { show: false } },
        ],
        hooks: { drawClear: [shadeProvisional] },
      },
      chartData,
      el,
    )
    new ResizeObserver(() => chart.setSize(chartSize())).observe(el)
  }

  const describeWindows = (meta) => {
    const w = meta.windows
    const parts = [`${w.count} windows: ${w.final} final, ${w.provisional} provisional`]
    if (w.open) parts.push(`${w.open} still counting`)
    $('windows').textContent = parts.join(', ')
    $('freshness').textContent = meta.complete_through
      ? `Complete through ${utc(meta.complete_through)}: every on-time event before it is counted.`
      : 'Not complete through any time yet: the stream workers have not checkpointed.'
  }

  // --- comparison: the change in percent beside each top number ----------------------------------
  const CHANGE_OF = {
    visitors: 'total-visitors',
    pageviews: 'total-pageviews',
    events: 'total-events',
    visits: 'total-visits',
    bounce_rate: 'bounce-rate',
    visit_duration: 'visit-duration',
  }
  const showChanges = (agg) => {
    for (const [metric, id] of Object.entries(CHANGE_OF)) {
      const value = $(id)
      let badge = value.parentElement.querySelector('.change')
      if (!badge) {
        badge = document.createElement('span')
        badge.className = 'change'
        value.after(badge)
      }
      const r = agg.results[metric]
      const shown = r && 'change' in r
      badge.hidden = !shown
      if (!shown) continue
      // null: nothing to compare with (the other range had 0).
      badge.textContent =
        r.change === null ? (r.value > 0 ? 'new' : '–') : `${r.change > 0 ? '+' : ''}${r.change} %`
      badge.dataset.sign = r.change === null ? 'none' : r.change > 0 ? 'up' : r.change < 0 ? 'down' : 'flat'
      badge.title = `${fmt.format(r.comparison_value)} in ${agg.meta.comparison.from.slice(0, 10)} – ${agg.meta.comparison.to.slice(0, 10)}`
    }
  }

  // --- loading --------------------------------------------------------------------------------
  let loadCtl
  const load = async () => {
    const { site, range, compare } = state()
    if (!site) return
    loadCtl?.abort()
    const ctl = new AbortController()
    loadCtl = ctl
    const base = { site, period: range }
    const breakdown = (property, metrics) =>
      api('breakdown', { ...base, property, metrics: metrics.join(','), limit: 10 }, ctl.signal)
    try {
      const [agg, series, pages, entries, exits, referrers, browsers, devices] = await Promise.all([
        api(
          'aggregate',
          {
            ...base,
            metrics: 'visitors,pageviews,events,visits,bounce_rate,visit_duration',
            ...(compare ? { compare } : {}),
          },
          ctl.signal,
        ),
        api('timeseries', { ...base, metrics: 'pageviews,visitors' }, ctl.signal),
        breakdown('path', ['pageviews', 'visitors']),
        breakdown('entry_page', ['visits', 'bounce_rate', 'visit_duration']),
        breakdown('exit_page', ['visits', 'pageviews']),
        breakdown('referrer', ['visitors', 'pageviews']),
        breakdown('browser', ['visitors']),
        breakdown('device', ['visitors']),
      ])
      if (ctl.signal.aborted) return
      $('total-visitors').textContent = fmt.format(agg.results.visitors.value)
      $('total-pageviews').textContent = fmt.format(agg.results.pageviews.value)
      $('total-events').textContent = fmt.format(agg.results.events.value)
      $('total-visits').textContent = fmt.format(agg.results.visits.value)
      $('bounce-rate').textContent = `${agg.results.bounce_rate.value} %`
      $('visit-duration').textContent = duration(agg.results.visit_duration.value)
      showChanges(agg)
      const missing = agg.meta.visits?.windows_without_data ?? 0
      // Windows written before visits were counted show none until rebuilt.
      $('visits-note').textContent = missing > 0 ? `${missing} windows without visit data` : ''
      const bound = agg.meta.metrics?.visitors?.error_bound
      $('visitors-note').textContent = bound ? `estimate, ±${(bound * 100).toFixed(1)} %` : ''
      drawChart(series.results)
      describeWindows(series.meta)
      fillTable('pages', pages.results, 'path', ['pageviews', 'visitors'])
      fillTable('entry-pages', entries.results, 'entry_page', ['visits', 'bounce_rate', 'visit_duration'])
      fillTable('exit-pages', exits.results, 'exit_page', ['visits', 'pageviews'])
      fillTable('referrers', referrers.results, 'referrer', ['visitors', 'pageviews'])
      fillTable('browsers', browsers.results, 'browser', ['visitors'])
      fillTable('devices', devices.results, 'device', ['visitors'])
      document.body.dataset.loaded = site
      status('')
    } catch (err) {
      if (err.name === 'AbortError') return
      failed(err, site)
    }
  }

  const realtime = async () => {
    const { site } = state()
    if (!site || document.hidden) return
    try {
      const r = await api('realtime', { site, minutes: REALTIME_MINUTES, metrics: 'visitors,pageviews' })
      if (state().site !== site) return
      $('realtime').textContent = fmt.format(r.results.visitors.value)
      $('realtime-note').textContent =
        `last ${REALTIME_MINUTES} minutes · ${fmt.format(r.results.pageviews.value)} pageviews · ${new Date().toLocaleTimeString()}`
    } catch (err) {
      failed(err, site)
    }
  }

  const failed = (err, site) => {
    if (err.status === 401 || err.status === 403) {
      status(
        `The read token for ${site} was refused (${err.code || err.status}). Add it again under Sites & tokens.`,
        true,
      )
    } else status(`Could not load ${site}: ${err.message}`, true)
  }

  // --- controls -------------------------------------------------------------------------------
  const renderSites = () => {
    const list = sites()
    const select = $('site')
    select.replaceChildren(
      ...list.map((s) => {
        const o = document.createElement('option')
        o.value = s.site
        o.textContent = s.site
        return o
      }),
    )
    const ul = $('site-list')
    ul.replaceChildren(
      ...list.map((s) => {
        const li = document.createElement('li')
        li.textContent = `${s.site} ${s.remembered ? '(remembered)' : '(this session)'} `
        const rm = document.createElement('button')
        rm.type = 'button'
        rm.className = 'link'
        rm.textContent = 'remove'
        rm.addEventListener('click', () => {
          removeSite(s.site)
          if (state().site === s.site) setState({ site: sites()[0]?.site || '' })
          refresh()
        })
        li.append(rm)
        return li
      }),
    )
    let { site } = state()
    if (!list.some((s) => s.site === site)) {
      site = list[0]?.site || ''
      setState({ site })
    }
    select.value = site
    $('range').value = state().range
    $('compare').value = state().compare
    if (list.length === 0) {
      showSites(true)
      status('Add a site id and its read token (`tally sites token <site>`) to see its numbers.')
    }
  }
  const showSites = (show) => {
    $('sites').hidden = !show
    $('manage').setAttribute('aria-expanded', String(show))
  }
  const refresh = () => {
    renderSites()
    load()
    realtime()
  }

  $('manage').addEventListener('click', () => showSites($('sites').hidden))
  $('site').addEventListener('change', (e) => {
    setState({ site: e.target.value })
    $('realtime').textContent = '–'
    refresh()
  })
  $('range').addEventListener('change', (e) => {
    setState({ range: e.target.value })
    load()
  })
  $('compare').addEventListener('change', (e) => {
    setState({ compare: e.target.value })
    load()
  })
  $('add-site').addEventListener('submit', (e) => {
    e.preventDefault()
    const site = $('new-site').value.trim()
    const token = $('new-token').value.trim()
    if (!site || !token) return
    saveSite(site, token, $('remember').checked)
    e.target.reset()
    setState({ site })
    showSites(false)
    refresh()
  })
  window.addEventListener('hashchange', refresh)
  document.addEventListener('visibilitychange', () => !document.hidden && realtime())
  setInterval(realtime, REALTIME_EVERY_MS)
  setInterval(() => !document.hidden && load(), REFRESH_EVERY_MS)
  refresh()
})()
